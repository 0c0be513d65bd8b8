// SPDX-License-Identifier: MIT
// The plan for machines (`plan --json`, hashed for the table comment) and for people (`plan`).
#include "common/json.h"
#include "plan/plan.h"

#include "common/hash.h"

#include <sstream>

namespace portslice::plan {

namespace {

std::string rangeStr(PortRange r)
{
	return std::to_string(r.lo) + "-" + std::to_string(r.hi);
}

std::string matchStr(const config::Match &m)
{
	std::string out;
	auto add = [&](const std::string &k, const std::string &v) {
		out += (out.empty() ? "" : " ") + k + "=" + v;
	};
	if (m.iifname)
		add("iifname", *m.iifname);
	if (m.saddr)
		add("saddr", m.saddr->str());
	if (m.mark)
		add("mark", std::to_string(*m.mark));
	if (m.cgroup)
		add("cgroup", std::to_string(*m.cgroup));
	if (m.uid)
		add("uid", std::to_string(*m.uid));
	return out;
}

std::string tagsStr(const config::Tags &tags)
{
	std::string out;
	for (const auto &[k, v] : tags)
		out += (out.empty() ? "" : " ") + k + "=" + v;
	return out.empty() ? "(any)" : out;
}

void writeTags(JsonWriter &w, const config::Tags &tags)
{
	w.beginObject();
	for (const auto &[k, v] : tags)
		w.key(k).value(v);
	w.endObject();
}

// What writePlan writes for: `plan --json` (ranges as numbers, warnings) or
// the hash in the table comment. The hash keeps the form it was first
// defined on (ranges as "LO-HI" text, no warnings) so that a daemon upgrade
// does not see every applied table as another plan.
enum class Form { Json, Hash };

// A range as {"first": LO, "last": HI} in JSON, "LO-HI" in the hash's form.
void writeRange(JsonWriter &w, Form form, uint64_t lo, uint64_t hi)
{
	if (form == Form::Hash)
		w.value(std::to_string(lo) + "-" + std::to_string(hi));
	else
		w.beginObject().key("first").value(lo).key("last").value(hi).endObject();
}

// The canonical JSON of a plan. `piece` is called after each address and
// each source, so that a caller can take the text so far and hash it instead
// of holding the whole document (hundreds of megabytes for 100k sources).
template<class Piece>
void writePlan(const Plan &plan, Form form, JsonWriter &w, Piece &&piece)
{
	w.beginObject();
	w.key("server").value(plan.server);
	w.key("datacenter").value(plan.datacenter);
	w.key("uplink").value(plan.uplink);
	w.key("addresses").beginArray();
	for (const PlannedAddress &a : plan.addresses) {
		w.beginObject();
		w.key("address").value(a.address.str());
		w.key("datacenter").value(a.datacenter);
		w.key("local").value(a.local);
		w.key("tags");
		writeTags(w, a.tags);
		w.key("port_range");
		writeRange(w, form, a.portRange.lo, a.portRange.hi);
		w.key("slice_size").value(a.sliceSize);
		w.key("slice_count").value(a.sliceCount);
		w.key("my_slices").beginArray();
		for (uint32_t s : a.mySlices)
			w.value(s);
		w.endArray();
		w.key("my_ports").beginArray();
		for (const PortRange &r : a.myRuns)
			writeRange(w, form, r.lo, r.hi);
		w.endArray();
		// Owners as runs of equal owner: compact for fleets of many slices.
		w.key("owners").beginArray();
		for (uint32_t i = 0; i < a.sliceCount;) {
			uint32_t j = i;
			while (j + 1 < a.sliceCount && a.owner[j + 1] == a.owner[i] &&
			       a.previousOf(j + 1) == a.previousOf(i))
				j++;
			w.beginObject();
			w.key("slices");
			if (form == Form::Hash && i == j)
				w.value(std::to_string(i));
			else
				writeRange(w, form, i, j);
			if (a.owner[i] == kNoServer)
				w.key("server").null();
			else
				w.key("server").value(plan.servers[a.owner[i]].name);
			if (a.previousOf(i) != kNoServer)
				w.key("previous").value(plan.servers[a.previousOf(i)].name);
			w.endObject();
			i = j + 1;
		}
		w.endArray();
		w.endObject();
		piece(w);
	}
	w.endArray();
	w.key("sources").beginArray();
	for (const PlannedSource &s : plan.sources) {
		w.beginObject();
		w.key("name").value(s.name);
		w.key("nat").value(s.mode == NatMode::Stateless ? "stateless" : "conntrack");
		w.key("match").beginObject();
		if (s.match.iifname)
			w.key("iifname").value(*s.match.iifname);
		if (s.match.saddr)
			w.key("saddr").value(s.match.saddr->str());
		if (s.match.mark)
			w.key("mark").value(*s.match.mark);
		if (s.match.cgroup)
			w.key("cgroup").value(*s.match.cgroup);
		if (s.match.uid)
			w.key("uid").value(*s.match.uid);
		w.endObject();
		w.key("want");
		writeTags(w, s.want);
		if (s.mode == NatMode::Conntrack) {
			w.key("zone").value(s.zone);
			w.key("weight").value(s.weight);
		} else {
			// Stateless flows are notrack: no zone, said as null to a reader (the hash keeps its input).
			if (form == Form::Json)
				w.key("zone").null();
			w.key("block").value(s.block);
		}
		if (s.routeMark) {
			w.key("route_mark").value(*s.routeMark);
			w.key("route_table").value(*s.routeTable);
		}
		w.key("dropped").value(s.dropped());
		w.key("candidates").beginArray();
		for (uint32_t c : s.candidates)
			w.value(plan.addresses[c].address.str());
		w.endArray();
		w.key("assignments").beginArray();
		for (const Assignment &as : s.assignments) {
			w.beginObject();
			if (form == Form::Hash) {
				w.key("inside").value(as.first == as.last ? as.first.str()
									  : as.first.str() + "-" + as.last.str());
			} else {
				w.key("inside").beginObject().key("first").value(as.first.str());
				w.key("last").value(as.last.str()).endObject();
			}
			w.key("address").value(plan.addresses[as.address].address.str());
			w.key("ports");
			writeRange(w, form, as.ports.lo, as.ports.hi);
			w.endObject();
		}
		w.endArray();
		w.endObject();
		piece(w);
	}
	w.endArray();
	w.key("warnings").beginArray();
	if (form == Form::Json)
		for (const config::Diagnostic &d : plan.warnings)
			w.value(d.str());
	w.endArray();
	w.endObject();
}

} // namespace

std::string toJson(const Plan &plan)
{
	JsonWriter w;
	writePlan(plan, Form::Json, w, [](JsonWriter &) {});
	return w.str();
}

uint64_t Plan::hash() const
{
	// Warnings name the config file's path: the same plan read from another
	// path must hash the same, so the hash is that of the JSON without them.
	Fnv1a64 h;
	auto fold = [&h](JsonWriter &w) { h.add(w.take()); };
	JsonWriter w;
	writePlan(*this, Form::Hash, w, fold);
	fold(w);
	return h.value();
}

uint64_t Plan::identity() const
{
	JsonWriter w;
	w.beginObject();
	w.key("table").value(std::to_string(hash()));
	// By index: the names are in the table's plan already.
	w.key("servers").beginArray();
	for (const PlannedServer &s : servers) {
		w.beginObject();
		w.key("address").value(s.address.str());
		if (s.mac)
			w.key("mac").value(s.mac->str());
		w.endObject();
	}
	w.endArray();
	w.key("gateways").beginArray();
	for (const PlannedDatacenter &d : datacenters) {
		if (d.gateway)
			w.value(d.gateway->str());
		else
			w.null();
	}
	w.endArray();
	w.key("conntrack").beginObject();
	auto tuning = [&](const char *key, const std::optional<uint32_t> &v) {
		if (v)
			w.key(key).value(*v);
	};
	tuning("max", conntrack.max);
	tuning("buckets", conntrack.buckets);
	tuning("tcp_timeout_established", conntrack.tcpEstablished);
	tuning("tcp_timeout_time_wait", conntrack.tcpTimeWait);
	tuning("udp_timeout", conntrack.udp);
	tuning("udp_timeout_stream", conntrack.udpStream);
	w.endObject();
	w.endObject();
	uint64_t h = 14695981039346656037ull;
	for (char c : w.take())
		h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
	return h;
}

std::string toText(const Plan &plan)
{
	std::ostringstream out;
	const PlannedServer &self = plan.self();
	out << "server " << self.name << " (" << self.address.str() << ", data centre " << self.datacenter
	    << "), uplink " << plan.uplink << "\n\n";
	out << "addresses:\n";
	for (const PlannedAddress &a : plan.addresses) {
		out << "  " << a.address.str() << "  " << a.datacenter << (a.local ? "" : " (remote)") << "  "
		    << tagsStr(a.tags) << "\n";
		out << "    " << a.sliceCount << " slices of " << a.sliceSize << " ports in " << rangeStr(a.portRange)
		    << "; mine: ";
		if (a.mySlices.empty())
			out << "none";
		for (size_t i = 0; i < a.mySlices.size(); i++)
			out << (i ? ", " : "") << a.mySlices[i] << " (" << rangeStr(a.slice(a.mySlices[i])) << ")";
		out << "\n";
	}
	out << "\nsources:\n";
	for (const PlannedSource &s : plan.sources) {
		out << "  " << s.name << "  " << (s.mode == NatMode::Stateless ? "stateless" : "conntrack");
		if (s.mode == NatMode::Conntrack)
			out << "  zone " << s.zone << "  weight " << s.weight;
		else
			out << "  zone -  block " << s.block; // notrack: no zone
		out << "\n    match " << matchStr(s.match) << "; want " << tagsStr(s.want) << "\n";
		if (s.dropped())
			out << "    NO ADDRESS on this server: traffic dropped and counted\n";
		for (const Assignment &as : s.assignments) {
			std::string inside = as.first == as.last ? as.first.str() : as.first.str() + "-" + as.last.str();
			out << "    " << inside << " -> " << plan.addresses[as.address].address.str() << " ports "
			    << rangeStr(as.ports) << "\n";
		}
		if (s.routeMark)
			out << "    answers routed by fwmark 0x" << std::hex << *s.routeMark << std::dec << " to table "
			    << *s.routeTable << "\n";
	}
	if (!plan.warnings.empty()) {
		out << "\nwarnings:\n";
		for (const config::Diagnostic &d : plan.warnings)
			out << "  " << d.str() << "\n";
	}
	return out.str();
}

} // namespace portslice::plan
