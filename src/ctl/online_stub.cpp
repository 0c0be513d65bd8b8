// SPDX-License-Identifier: MIT
// Online commands when portslicectl is built without sdbus-c++: say so instead of failing obscurely.
#include <cstdio>

#include "ctl/online.h"

namespace portslice::ctl {

int runOnline(const OnlineOptions &options)
{
	std::fprintf(stderr, "portslicectl %s: this build has no D-Bus support (sdbus-c++ was not found at build time)\n",
		     options.command.c_str());
	return 1;
}

} // namespace portslice::ctl
