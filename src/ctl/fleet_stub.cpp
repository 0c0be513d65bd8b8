// SPDX-License-Identifier: MIT
// Fleet mode when portslicectl is built without libcurl or nlohmann-json: set-owner --fleet says so, status shows no fleet link.
#include <cstdio>

#include "ctl/fleet.h"

namespace portslice::ctl {

int runFleetSetOwner(const OnlineOptions &)
{
	std::fprintf(stderr, "portslicectl set-owner --fleet: this build has no fleet mode (libcurl or nlohmann-json "
			     "was not found at build time)\n");
	return 1;
}

void printFleetLink(const OnlineOptions &, JsonWriter *)
{
}

} // namespace portslice::ctl
