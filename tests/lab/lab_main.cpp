// SPDX-License-Identifier: MIT
// main() of every lab test: like gtest_main, but exits 77 (meson's "skipped") when not root, so a skipped lab shows as skipped.
#include <cstdio>
#include <gtest/gtest.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	::testing::InitGoogleTest(&argc, argv);
	int rc = RUN_ALL_TESTS();
	if (rc == 0 && geteuid() != 0) {
		std::printf("lab tests skipped: they need root to build network namespaces\n");
		return 77;
	}
	return rc;
}
