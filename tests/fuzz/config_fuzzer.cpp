// SPDX-License-Identifier: MIT
// libFuzzer target: any bytes through the config loader, and on success through the planner, the table model and the text renderer.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "config/config.h"
#include "nft/model.h"
#include "nft/render.h"
#include "plan/plan.h"

using namespace portslice;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	std::string_view text(reinterpret_cast<const char *>(data), size);
	config::LoadResult loaded = config::loadString(text, "fuzz.toml", SIZE_MAX);
	// Cut at every top-level header it can be, the text must load the same:
	// the same diagnostics in the same order, the same plan (below).
	config::LoadResult chunked = config::loadString(text, "fuzz.toml", 1);
	// Every diagnostic must format, with or without a location.
	if (chunked.diagnostics.size() != loaded.diagnostics.size() || chunked.ok() != loaded.ok())
		abort();
	for (size_t i = 0; i < loaded.diagnostics.size(); i++)
		if (loaded.diagnostics[i].str() != chunked.diagnostics[i].str())
			abort();
	if (!loaded.ok())
		return 0;
	const config::Config &config = *loaded.config;
	// Plan as the file's server, then as every other server of the fleet
	// (--server), bounded so that one input stays fast.
	size_t planned = 0;
	for (size_t i = 0; i <= config.servers.size() && planned < 4; i++, planned++) {
		std::string_view server = i == 0 ? std::string_view{} : std::string_view{ config.servers[i - 1].name };
		plan::PlanResult result = plan::makePlan(config, server);
		plan::PlanResult fromChunks = plan::makePlan(*chunked.config, server);
		for (const config::Diagnostic &d : result.diagnostics)
			(void)d.str();
		if (result.ok() != fromChunks.ok())
			abort();
		if (!result.ok())
			continue;
		if (plan::toJson(*result.plan) != plan::toJson(*fromChunks.plan))
			abort();
		(void)plan::toText(*result.plan);
		(void)nft::render(nft::buildModel(*result.plan, 1));
	}
	return 0;
}
