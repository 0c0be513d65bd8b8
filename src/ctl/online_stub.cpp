// SPDX-License-Identifier: MIT
// Online commands when portslicectl is built without sdbus-c++: say so instead of failing obscurely.
#include <cstdio>

#include "ctl/online.h"

namespace portslice::ctl {

int runOnline(const std::vector<std::string> &args)
{
	std::fprintf(stderr, "portslicectl %s: this build has no D-Bus support (sdbus-c++ was not found at build time)\n",
		     args.empty() ? "" : args[0].c_str());
	return 1;
}

} // namespace portslice::ctl
