// SPDX-License-Identifier: MIT
// Memory of the config loader (docs/performance.md "Memory"): peak while loading a generated fleet, and the loaded Config.
//
// Usage: config_mem_bench [--sizes N,N,...]   (default 4200,10000)
//
// Per size, in a fresh child process each (so that one load's heap does not
// shape the next): writes generatedFleet(N) of tests/lab/nat_fleet.h to a
// temporary file, trims the heap, resets the peak (/proc/self/clear_refs),
// runs config::loadFile, and prints the peak RSS over the baseline (VmHWM -
// VmRSS before), the RSS the Config keeps after malloc_trim, the load time
// and how many chunks toml++ parsed.
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "config/config.h"
#include "nat_fleet.h"

namespace {

// A field of /proc/self/status, in KiB.
long statusKib(const char *field)
{
	std::ifstream in("/proc/self/status");
	std::string line;
	while (std::getline(in, line))
		if (line.rfind(field, 0) == 0)
			return std::stol(line.substr(std::strlen(field)));
	return -1;
}

int measure(uint32_t n, const std::string &dir)
{
	std::string path = dir + "/fleet-" + std::to_string(n) + ".toml";
	std::string text = portslice::testing::generatedFleet(n);
	{
		std::ofstream out(path);
		out << text;
	}
	size_t bytes = text.size();
	text = std::string();
	malloc_trim(0);
	{
		std::ofstream reset("/proc/self/clear_refs");
		reset << "5"; // VmHWM := VmRSS
	}
	long base = statusKib("VmRSS:");
	auto t0 = std::chrono::steady_clock::now();
	portslice::config::LoadResult r = portslice::config::loadFile(path);
	auto t1 = std::chrono::steady_clock::now();
	long peak = statusKib("VmHWM:");
	malloc_trim(0);
	long kept = statusKib("VmRSS:");
	std::filesystem::remove(path);
	if (!r.ok()) {
		std::fprintf(stderr, "config_mem_bench: %s\n", r.diagnostics.empty() ? "invalid" : r.diagnostics[0].str().c_str());
		return 1;
	}
	std::printf("%8u %10.2f %8zu %14.1f %12.1f %10.0f\n", n, static_cast<double>(bytes) / 1e6, r.chunks,
		    static_cast<double>(peak - base) / 1024, static_cast<double>(kept - base) / 1024,
		    std::chrono::duration<double, std::milli>(t1 - t0).count());
	return 0;
}

} // namespace

int main(int argc, char **argv)
{
	std::vector<uint32_t> sizes = { 4200, 10000 };
	for (int i = 1; i < argc; i++) {
		if (std::string(argv[i]) == "--sizes" && i + 1 < argc) {
			sizes.clear();
			std::stringstream list(argv[++i]);
			std::string item;
			while (std::getline(list, item, ','))
				sizes.push_back(static_cast<uint32_t>(std::stoul(item)));
		} else {
			std::fprintf(stderr, "usage: config_mem_bench [--sizes N,N,...]\n");
			return 2;
		}
	}
	char dir[] = "/tmp/config_mem_bench.XXXXXX";
	if (!mkdtemp(dir)) {
		std::perror("config_mem_bench: mkdtemp");
		return 1;
	}
	std::printf(" sources   TOML(MB)   chunks  peak over base  Config kept  load (ms)\n");
	std::fflush(stdout);
	int status = 0;
	for (uint32_t n : sizes) {
		pid_t pid = fork();
		if (pid == 0) {
			int rc = measure(n, dir);
			std::fflush(stdout);
			_exit(rc);
		}
		int child = 0;
		waitpid(pid, &child, 0);
		if (!WIFEXITED(child) || WEXITSTATUS(child) != 0)
			status = 1;
	}
	std::filesystem::remove(dir);
	return status;
}
