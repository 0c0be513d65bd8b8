// SPDX-License-Identifier: MIT
// portsliced: serves org.portslice.Egress1, or `--apply-once` applies the config and exits, `--remove` takes everything out (docs/portsliced.8.scd).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <string>

#include "common/cli.h"
#include "common/log.h"
#include "config/config.h"
#include "daemon/applier.h"
#ifdef PORTSLICE_HAVE_DBUS
#include "daemon/kernel_backend.h"
#include "daemon/serve.h"
#endif
#include "plan/plan.h"

using namespace portslice;

namespace {

// Parse, validate and plan; on any error print them all and return nullopt.
// `text`: the bytes loaded, which are the bytes kept (a pipe reads once).
std::optional<plan::Plan> load(const std::string &file, std::string &text)
{
	std::optional<std::string> read = config::readText(file);
	config::LoadResult loaded = read ? config::loadString(*read, file) : config::loadFile(file);
	for (const config::Diagnostic &d : loaded.diagnostics)
		std::cerr << d.str() << "\n";
	if (!loaded.ok())
		return std::nullopt;
	plan::PlanResult planned = plan::makePlan(*loaded.config);
	for (const config::Diagnostic &d : planned.diagnostics)
		std::cerr << d.str() << "\n";
	if (!planned.ok())
		return std::nullopt;
	text = std::move(*read);
	return std::move(*planned.plan);
}

// A copy of the file's text in the state directory, written beside the old
// one (TO.next) before the apply, so that the text is not held while the
// table is written (5 MB at 10,000 sources); put in place after it.
Status writeCopy(const std::string &text, const std::string &to)
{
	std::error_code ec;
	std::filesystem::create_directories(std::filesystem::path(to).parent_path(), ec);
	if (ec)
		return Error(ec, "creating " + std::filesystem::path(to).parent_path().string());
	std::string next = to + ".next";
	std::ofstream out(next, std::ios::binary | std::ios::trunc);
	out << text;
	out.flush();
	if (!out)
		return Error(errno ? errno : EIO, "writing " + next);
	return {};
}

Status commitCopy(const std::string &to)
{
	std::string next = to + ".next";
	if (std::rename(next.c_str(), to.c_str()) != 0)
		return Error(errno, "renaming " + next);
	return {};
}

} // namespace

int main(int argc, char **argv)
{
	CLI::App app{"Share egress IPv4 addresses across a fleet by port slices. Without --apply-once or --remove: the "
		     "daemon, serving org.portslice.Egress1 on the system bus (systemd Type=notify; SIGHUP reloads).",
		     "portsliced"};
	cli::setUp(app);
	std::string configFile = "/etc/portslice/portslice.toml";
	daemon::ApplierOptions options;
	bool applyOnce = false, remove = false, noXdp = false;
	long drainSeconds = 60;
	long journalDays = 400;
	bool noRepair = false;
	app.add_option("--config", configFile, "the config file (default: " + configFile + ")")->type_name("FILE");
	app.add_option("--state-dir", options.stateDir,
		       "where orchestration changes and restorable values are kept (default: " + options.stateDir + ")")
		->type_name("DIR");
	CLI::Option *noXdpFlag = app.add_flag("--no-xdp", noXdp, "NAT only: no XDP forwarder on the uplink (not with --xdp-pin-dir)");
	app.add_option("--xdp-pin-dir", options.xdpPinDir,
		       "bpffs directory of the forwarder's maps and link (default: under /sys/fs/bpf)")
		->type_name("DIR")
		->excludes(noXdpFlag);
	app.add_option("--drain-seconds", drainSeconds,
		       "seconds the old owner of a slice moved over D-Bus keeps its flows, 0 to 86400 (default: 60)")
		->type_name("N")
		->check(CLI::Range(0L, 86400L).description(""));
	std::string metricsFile;
	app.add_option("--metrics-file", metricsFile,
		       "keep a node_exporter textfile of the metrics there, replaced atomically every 15 s, "
		       "after each apply and on each change of state or last error")
		->type_name("PATH");
	app.add_option("--journal-days", journalDays,
		       "days the ownership journal keeps its records, 1 to 36500 (default: 400)")
		->type_name("N")
		->check(CLI::Range(1L, 36500L).description(""));
	app.add_flag("--no-repair", noRepair, "leave a table changed by hand as it is (logged), for portslicectl audit");
	CLI::Option *applyOnceFlag =
		app.add_flag("--apply-once", applyOnce, "apply the file and exit 0, or exit 1 changing nothing (not with --remove)");
	app.add_flag("--remove", remove, "delete everything portslice applied and exit")->excludes(applyOnceFlag);
	if (std::optional<int> code = cli::parse(app, argc, argv))
		return *code;
	options.xdp = !noXdp;

	// --apply-once: the file first, so that a bad one is reported before
	// anything of the kernel is opened.
	std::optional<plan::Plan> plan;
	std::string text;
	if (applyOnce) {
		plan = load(configFile, text);
		if (!plan)
			return 1;
	}

	auto applier = daemon::Applier::open(options);
	if (!applier) {
		// The daemon logs as it always does (with its priority); the
		// one-shot commands answer on standard error.
		if (!applyOnce && !remove)
			log::Line(log::Priority::Err) << applier.error().message();
		else
			std::cerr << "portsliced: " << applier.error().message() << "\n";
		return 1;
	}
	if (!applyOnce && !remove) {
#ifdef PORTSLICE_HAVE_DBUS
		daemon::KernelBackend backend(*applier, options.xdp, options.xdpPinDir);
		daemon::ServeOptions serveOptions{configFile, options.stateDir};
		serveOptions.drain = std::chrono::seconds(drainSeconds);
		serveOptions.metricsFile = metricsFile;
		serveOptions.journalDays = static_cast<int>(journalDays);
		serveOptions.repair = !noRepair;
		return daemon::serve(serveOptions, backend);
#else
		std::cerr << "portsliced: built without D-Bus support (sdbus-c++, libsystemd): "
			     "only --apply-once and --remove\n";
		return 2;
#endif
	}
	if (remove) {
		Status s = applier->remove();
		if (!s) {
			std::cerr << "portsliced: " << s.error().message() << "\n";
			return 1;
		}
		std::error_code ec;
		std::filesystem::remove(options.stateDir + "/applied.toml", ec);
		return 0;
	}

	// The next generation follows the one the kernel holds.
	auto state = applier->nft().readState();
	if (!state) {
		std::cerr << "portsliced: " << state.error().message() << "\n";
		return 1;
	}
	if (state->has_value() && (*state)->generation == std::numeric_limits<uint64_t>::max()) {
		std::cerr << "portsliced: the table holds generation " << (*state)->generation
			  << ", the largest there is (generations never wrap); nothing applied: run portsliced --remove "
			     "to count from 1 again\n";
		return 1;
	}
	uint64_t generation = state->has_value() ? (*state)->generation + 1 : 1;
	// The file of the last --apply-once, if the table is still its plan: what
	// a failure puts back.
	std::string appliedCopy = options.stateDir + "/applied.toml";
	std::optional<plan::Plan> previous;
	if (state->has_value() && std::filesystem::exists(appliedCopy)) {
		config::LoadResult copy = config::loadFile(appliedCopy);
		if (copy.ok()) {
			plan::PlanResult planned = plan::makePlan(*copy.config);
			if (planned.ok() && planned.plan->hash() == (*state)->planHash)
				previous = std::move(*planned.plan);
		}
	}
	Status kept = writeCopy(text, appliedCopy);
	std::string().swap(text);
	auto result = applier->apply(*plan, nullptr, generation, previous ? &*previous : nullptr);
	if (!result) {
		std::error_code ec;
		std::filesystem::remove(appliedCopy + ".next", ec);
		std::cerr << "portsliced: " << result.error().message() << "\n";
		return 1;
	}
	if (kept)
		kept = commitCopy(appliedCopy);
	if (!kept)
		std::cerr << "portsliced: warning: " << kept.error().message()
			  << " (a failed --apply-once could not put this generation back)\n";
	const daemon::ApplyResult &r = *result;
	std::string transactions = r.nft.transactions > 1 ? ", in " + std::to_string(r.nft.transactions) + " transactions" : "";
	std::printf("portsliced: applied generation %llu: %zu elements in %zu messages (%zu bytes%s); "
		    "%zu conntrack entries of moved slices deleted\n",
		    static_cast<unsigned long long>(generation), r.nft.elementsAdded, r.nft.messages, r.nft.bytes,
		    transactions.c_str(), r.conntrackDeleted);
	for (const conntrack::SysctlChange &c : r.tuning.changed)
		std::printf("portsliced: %s = %s (was %s)\n", c.name.c_str(), c.value.c_str(), c.previous.c_str());
	for (const std::string &s : r.tuning.skipped)
		std::printf("portsliced: not set: %s\n", s.c_str());
	for (const std::string &s : r.routes.skipped)
		std::printf("portsliced: no return route: %s\n", s.c_str());
	for (const std::string &s : r.neighbours.skipped)
		std::printf("portsliced: no managed neighbour entry: %s\n", s.c_str());
	return 0;
}
