// SPDX-License-Identifier: MIT
// portslicectl's fleet mode: set-owner --fleet (a compare-and-swap in etcd) and the fleet link in status (fleetd's status file).
#pragma once

#include "common/json.h"
#include "ctl/online.h"

namespace portslice::ctl {

// set-owner ADDRESS SLICE SERVER --fleet: writes PREFIX/owners/ADDRESS/SLICE
// of the file's [fleet] with a transaction that checks the key's revision
// has not changed since it was read. Exit 0 written, 1 refused, 3 etcd unreachable.
int runFleetSetOwner(const OnlineOptions &options);

// status: the fleet link from portslice-fleetd's status file, as text lines
// or as the "fleet" key of `json`; nothing when the file does not exist
// (fleet mode not in use).
void printFleetLink(const OnlineOptions &options, JsonWriter *json);

} // namespace portslice::ctl
