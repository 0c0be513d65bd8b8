// SPDX-License-Identifier: MIT
// libFuzzer target: any bytes through the config loader, and on success through the planner, the table model and the text renderer.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "config/config.h"
#include "nft/model.h"
#include "nft/render.h"
#include "plan/plan.h"

using namespace portslice;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	std::string_view text(reinterpret_cast<const char *>(data), size);
	config::LoadResult loaded = config::loadString(text, "fuzz.toml");
	// Every diagnostic must format, with or without a location.
	for (const config::Diagnostic &d : loaded.diagnostics)
		(void)d.str();
	if (!loaded.ok())
		return 0;
	const config::Config &config = *loaded.config;
	// Plan as the file's server, then as every other server of the fleet
	// (--server), bounded so that one input stays fast.
	size_t planned = 0;
	for (size_t i = 0; i <= config.servers.size() && planned < 4; i++, planned++) {
		std::string_view server = i == 0 ? std::string_view{} : std::string_view{ config.servers[i - 1].name };
		plan::PlanResult result = plan::makePlan(config, server);
		for (const config::Diagnostic &d : result.diagnostics)
			(void)d.str();
		if (!result.ok())
			continue;
		(void)plan::toJson(*result.plan);
		(void)plan::toText(*result.plan);
		(void)nft::render(nft::buildModel(*result.plan, 1));
	}
	return 0;
}
