// SPDX-License-Identifier: MIT
// The plan: what one server of the fleet does, computed purely from the config (no kernel, no I/O).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/net.h"
#include "config/config.h"

namespace portslice::plan {

using config::NatMode;
using config::PortRange;

inline constexpr int32_t kNoServer = -1;

struct PlannedServer {
	std::string name;
	Ipv4 address;
	std::string datacenter;
	std::optional<Mac> mac;
};

struct PlannedDatacenter {
	std::string name;
	std::optional<Ipv4> gateway;
};

struct PlannedAddress {
	Ipv4 address;
	std::string datacenter;
	bool local = false; // lives in this server's data centre
	config::Tags tags;
	PortRange portRange;
	uint32_t sliceSize = 0;
	uint32_t sliceCount = 0;
	std::vector<int32_t> owner;    // per slice: index into Plan::servers, or kNoServer
	std::vector<int32_t> previous; // per slice: draining previous owner, or kNoServer; empty: no drain
	std::vector<uint32_t> mySlices; // slices this server owns, ascending
	std::vector<PortRange> myRuns;  // the same, adjacent slices merged

	PortRange slice(uint32_t index) const
	{
		uint16_t lo = static_cast<uint16_t>(portRange.lo + index * sliceSize);
		return PortRange{lo, static_cast<uint16_t>(lo + sliceSize - 1)};
	}
	// The slice a port falls in, or nullopt outside the usable slices.
	std::optional<uint32_t> sliceOf(uint16_t port) const;
	int32_t previousOf(uint32_t index) const { return index < previous.size() ? previous[index] : kNoServer; }
	void setPrevious(uint32_t index, int32_t server);
	// Whether server `self` is the draining previous owner of slice `index`.
	bool drainedBy(uint32_t index, uint32_t self) const
	{
		return previousOf(index) == static_cast<int32_t>(self);
	}
	// What server `self` may still send from: its slices and those it drains
	// as previous owner, adjacent ones merged (the leak guard's ports).
	std::vector<PortRange> guardRuns(uint32_t self) const;
};

// A run of inside addresses [first, last] translated to ports [ports.lo,
// ports.hi] of one shared address. For a stateless source first == last (one
// block per inside address); a conntrack source's inside addresses are split
// into contiguous runs, one per share.
struct Assignment {
	Ipv4 first;
	Ipv4 last;
	uint32_t address = 0; // index into Plan::addresses
	PortRange ports;
	auto operator<=>(const Assignment &) const = default;
};

// Ports of one shared address handed to a conntrack source.
struct Share {
	uint32_t address = 0; // index into Plan::addresses
	PortRange ports;
	auto operator<=>(const Share &) const = default;
};

struct PlannedSource {
	std::string name;
	config::Match match;
	config::Tags want;
	NatMode mode = NatMode::Conntrack;
	uint32_t block = 0;  // stateless: ports per inside address
	uint32_t weight = 1;
	uint16_t zone = 0;   // conntrack zone, both directions
	std::vector<uint32_t> candidates; // indices into Plan::addresses
	std::vector<Assignment> assignments;
	std::vector<Share> shares; // conntrack: its ports, by address (assignments spread over them)
	// A source matched by iifname gets its answers routed back out of that
	// interface: fwmark routeMark selects routing table routeTable.
	std::optional<uint32_t> routeMark;
	std::optional<uint32_t> routeTable;
	config::Location where;

	// No candidate here, or no port on any of them: its traffic is dropped.
	bool dropped() const { return assignments.empty(); }
};

// What the shape of the table depends on (nft/model.h, portForm): it
// follows from the config alone, moves do not change it.
struct PortShape {
	uint64_t statelessInside = 0; // inside addresses of the stateless sources
	uint32_t blockGrain = 0;      // largest power of two dividing every stateless block (0: no stateless source)
	uint32_t largestBlock = 0;
	uint32_t sliceGrain = 0; // ... dividing the first port and the slice size of every address (0: none)
	bool operator==(const PortShape &) const = default;
};

struct Plan {
	std::string server;
	uint32_t serverIndex = 0;
	std::string datacenter;
	std::string uplink;
	std::vector<PlannedServer> servers;
	std::vector<PlannedDatacenter> datacenters;
	std::vector<PlannedAddress> addresses;
	std::vector<PlannedSource> sources;
	config::ConntrackTuning conntrack;
	std::vector<config::Diagnostic> warnings;
	// Derived by makePlan, so that a slice move looks only at whom it
	// concerns instead of walking every source (neither is in hash()):
	// per address, the sources whose wanted tags it carries, ascending (a
	// source's candidates are among them); and what the table's shape
	// depends on (portShape). A plan made otherwise leaves them empty, and
	// the readers walk the sources.
	std::vector<std::vector<uint32_t>> wanters;
	std::optional<PortShape> shape;

	// FNV-1a of the canonical JSON: equal plans, equal hash, on every machine.
	// It names the nftables table (its comment); the table alone does not
	// show the servers, data centres and conntrack tuning.
	uint64_t hash() const;
	// Everything that reaches the kernel: hash() and what the table does not
	// hold (conntrack sysctls; servers' addresses and MACs and data centres'
	// gateways, which the XDP forwarder's maps hold). Equal identities: the
	// kernel needs no change. (Another server's data centre is not in it:
	// nothing applied depends on it.)
	uint64_t identity() const;
	const PlannedServer &self() const { return servers[serverIndex]; }
	// The sources that may use address `ai` (the wanters, or every source).
	template<class F>
	void forWanters(uint32_t ai, F &&f) const
	{
		if (wanters.size() == addresses.size()) {
			for (uint32_t si : wanters[ai])
				if (si < sources.size())
					f(si);
		} else {
			for (uint32_t si = 0; si < sources.size(); si++)
				f(si);
		}
	}
};

struct PlanResult {
	std::optional<Plan> plan;
	std::vector<config::Diagnostic> diagnostics; // errors and warnings
	bool ok() const { return plan.has_value(); }
};

// Plan as `server` (the file's [server].name when empty).
PlanResult makePlan(const config::Config &config, std::string_view server = {});

// One slice changed owner: the plan follows without planning the fleet
// again. `before` keeps what changed, to undo it and to tell the table's
// delta. Same result as makePlan of the changed config. When the move
// changes which addresses a source may use (this server got its first or
// lost its last slice of a local address), the sources that want the
// address gain or lose it as a candidate, and the addresses whose users'
// ports that moves are handed out again: nothing else. Nothing when a share
// no longer fits, a conntrack source matched by iifname gains or loses
// its only address (its return route changes), or a conntrack source gets
// no port of an address handed out again (before or after: its warnings
// change): then the caller plans the fleet anew (and reports the errors).
struct SliceMove {
	uint32_t address = 0; // index into Plan::addresses
	uint32_t slice = 0;
	PlannedAddress before;
	struct Source {
		uint32_t index; // into Plan::sources
		std::vector<Assignment> assignments;
		std::vector<Share> shares;
		std::optional<std::vector<uint32_t>> candidates; // only when they changed
	};
	std::vector<Source> sources; // the sources whose ports were handed out again, as they were
	// The move changed sources' candidates: `candidates` of those sources and
	// the plan's warnings (who is dropped) are kept as they were.
	bool candidatesChanged = false;
	std::optional<std::vector<config::Diagnostic>> warnings;
	// Addresses whose users' ports changed, ascending (the moved one among
	// them when its runs changed): their handover slices may see other zones.
	std::vector<uint32_t> reallocated;
};

// plan.shape, or (a plan not made by makePlan) worked out from its sources
// and addresses.
PortShape portShape(const Plan &plan);

std::optional<SliceMove> moveSlice(Plan &plan, uint32_t address, uint32_t slice, int32_t owner,
				   int32_t previous = kNoServer);
void undoMove(Plan &plan, SliceMove &&move);

// Fwmark and routing table of iifname sources: kRouteMarkBase + zone, and
// kRouteTableBase + zone. Documented in docs/config.md.
inline constexpr uint32_t kRouteMarkBase = 0x50530000;
inline constexpr uint32_t kRouteTableBase = 0x5053;

// The abuse-desk query: who had ADDRESS:PORT.
struct OwnerAnswer {
	std::string server;            // empty: no server owns that port
	std::optional<uint32_t> slice; // nullopt: port outside the usable slices
	std::string source;            // the source whose share holds the port, if any
	std::optional<Ipv4> inside;    // stateless: the inside address of that block
	std::optional<Ipv4> insideLast; // conntrack: inside range [inside, insideLast]
};

std::optional<OwnerAnswer> findOwner(const config::Config &config, Ipv4 address, uint16_t port,
				     std::vector<config::Diagnostic> *diagnostics = nullptr);

// `portslicectl plan --json`: stable, sorted, byte-for-byte deterministic.
std::string toJson(const Plan &plan);
// `portslicectl plan`: the same, for a person.
std::string toText(const Plan &plan);

} // namespace portslice::plan
