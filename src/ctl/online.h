// SPDX-License-Identifier: MIT
// The online commands of portslicectl (status, reload, set-owner, stats), spoken over D-Bus.
#pragma once

#include <string>
#include <vector>

namespace portslice::ctl {

// args[0] is the command name. Returns the process exit code.
int runOnline(const std::vector<std::string> &args);

} // namespace portslice::ctl
