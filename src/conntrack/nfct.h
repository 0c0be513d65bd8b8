// SPDX-License-Identifier: MIT
// RAII handles of libnetfilter_conntrack, one alias per C type for every user.
#pragma once

#include <libnetfilter_conntrack/libnetfilter_conntrack.h>

#include "common/handle.h"

namespace portslice {

using NfctHandle = Handle<nfct_handle, nfct_close>;
using NfConntrack = Handle<nf_conntrack, nfct_destroy>;

} // namespace portslice
