// SPDX-License-Identifier: MIT
// The Prometheus text of Stats() rows (docs/operations.md, "Reading stats"), and the atomic replacement of a node_exporter textfile.
#include "service/metrics.h"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <fcntl.h>
#include <map>
#include <sstream>
#include <unistd.h>

namespace portslice::service {

namespace {

struct Sample {
	std::vector<std::pair<std::string, std::string>> labels;
	std::string value;
};

struct Metric {
	std::string type; // counter, gauge
	std::string help;
	std::vector<Sample> samples;
};

std::string escapeLabel(const std::string &text)
{
	std::string out;
	for (char c : text) {
		if (c == '\\' || c == '"')
			out += '\\';
		if (c == '\n') {
			out += "\\n";
			continue;
		}
		out += c;
	}
	return out;
}

std::string metricPart(const std::string &text)
{
	std::string out;
	for (char c : text)
		out += (std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
	return out;
}

// A ratio as Prometheus reads it: plain decimal, 0 to 1.
std::string ratio(uint64_t part, uint64_t whole)
{
	if (whole == 0)
		return "0";
	double r = static_cast<double>(part) / static_cast<double>(whole);
	if (r > 1)
		r = 1;
	char text[32];
	std::snprintf(text, sizeof(text), "%.6g", r);
	return text;
}

class Exposition {
public:
	void add(const std::string &name, const char *type, const char *help, Sample sample)
	{
		Metric &m = metrics_[name];
		if (m.type.empty()) {
			m.type = type;
			m.help = help;
		}
		m.samples.push_back(std::move(sample));
	}

	std::string text() const
	{
		std::ostringstream out;
		for (const auto &[name, m] : metrics_) {
			out << "# HELP " << name << " " << m.help << "\n# TYPE " << name << " " << m.type << "\n";
			for (const Sample &s : m.samples) {
				out << name;
				if (!s.labels.empty()) {
					out << "{";
					for (size_t i = 0; i < s.labels.size(); ++i)
						out << (i ? "," : "") << s.labels[i].first << "=\""
						    << escapeLabel(s.labels[i].second) << "\"";
					out << "}";
				}
				out << " " << s.value << "\n";
			}
		}
		return out.str();
	}

private:
	std::map<std::string, Metric> metrics_; // sorted by name: a stable text
};

// The metrics of docs/operations.md, "Reading stats" that one row makes, by (kind, counter).
struct Known {
	const char *kind;
	const char *counter;
	const char *metric;
	const char *type;
	const char *label; // the row's name goes to this label
	const char *help;
};

constexpr Known kKnown[] = {
	{"source", "packets", "portslice_source_packets_total", "counter", "source",
	 "Packets of the source on their way out of the uplink (counted before the leak guard and before conntrack confirms the NAT, so its drops are in)."},
	{"source", "bytes", "portslice_source_bytes_total", "counter", "source",
	 "Bytes of the source on their way out of the uplink (counted before the leak guard and before conntrack confirms the NAT, so its drops are in)."},
	{"source", "conntrack_entries", "portslice_source_conntrack_entries", "gauge", "source",
	 "Conntrack entries in the source's zone."},
	{"source", "nat_failures", "portslice_source_nat_failures_total", "counter", "source",
	 "New flows of the source dropped because no port of its range was free (each try counts: a retransmitted SYN is another)."},
	{"guard", "drops", "portslice_guard_drops_total", "counter", "source",
	 "Packets of the source the leak guard dropped: a shared address with a port outside this server's slices."},
	{"address", "packets", "portslice_address_packets_total", "counter", "address",
	 "Packets with the shared address as source on their way out of the uplink (after the leak guard, before conntrack confirms the NAT)."},
	{"address", "bytes", "portslice_address_bytes_total", "counter", "address",
	 "Bytes with the shared address as source on their way out of the uplink (after the leak guard, before conntrack confirms the NAT)."},
	{"xdp", "packets", "portslice_xdp_packets_total", "counter", "verdict",
	 "Packets the XDP forwarder on the uplink gave the verdict."},
	{"xdp", "bytes", "portslice_xdp_bytes_total", "counter", "verdict",
	 "Bytes the XDP forwarder on the uplink gave the verdict."},
};

} // namespace

std::string prometheusText(const MetricsInfo &info, const std::vector<StatRow> &rows)
{
	Exposition e;
	std::string version = info.version;
	for (const StatRow &row : rows)
		if (row.kind == "daemon" && row.counter == "version")
			version = row.name; // the daemon's own, when a reader formats its rows
	e.add("portslice_info", "gauge", "Always 1: the version of portsliced and the server it runs as.",
	      {{{"version", version}, {"server", info.server}}, "1"});
	for (const char *state : {"applied", "degraded", "failed"})
		e.add("portslice_state", "gauge",
		      "1 for the daemon's current state (applied, degraded, failed), 0 for the others.",
		      {{{"state", state}}, info.state == state ? "1" : "0"});

	// (source, address) -> ports in use, ports of its range there
	std::map<std::pair<std::string, std::string>, std::pair<uint64_t, uint64_t>> sourceUse;
	std::map<std::pair<std::string, std::string>, std::pair<uint64_t, uint64_t>> sliceUse; // same per slice
	for (const StatRow &row : rows) {
		const std::string value = std::to_string(row.value);
		if (row.kind == "daemon") {
			if (row.counter == "generation")
				e.add("portslice_generation", "gauge", "The generation the daemon applied last.", {{}, value});
			else if (row.counter == "apply_failures")
				e.add("portslice_apply_failures_total", "counter",
				      "Applies that failed (reload, orchestration, repair) since the daemon started.",
				      {{}, value});
			else if (row.counter == "version")
				continue;
			else if (row.counter == "last_apply_timestamp_seconds")
				e.add("portslice_last_apply_timestamp_seconds", "gauge",
				      "Unix time of the last apply that changed the kernel (0: none since start).",
				      {{}, value});
			continue;
		}
		if (row.kind == "source_address") {
			size_t space = row.name.rfind(' ');
			auto key = std::pair{row.name.substr(0, space), space == std::string::npos ? "" : row.name.substr(space + 1)};
			if (row.counter == "ports_in_use")
				sourceUse[key].first = row.value;
			else if (row.counter == "ports")
				sourceUse[key].second = row.value;
			continue;
		}
		if (row.kind == "slice") {
			size_t slash = row.name.rfind('/');
			std::vector<std::pair<std::string, std::string>> labels{
				{"address", row.name.substr(0, slash)},
				{"slice", slash == std::string::npos ? "" : row.name.substr(slash + 1)}};
			if (row.counter == "ports_in_use") {
				e.add("portslice_slice_ports_in_use", "gauge",
				      "Distinct ports of the slice that conntrack entries use as their NAT source.",
				      {labels, value});
				sliceUse[{labels[0].second, labels[1].second}].first = row.value;
			} else if (row.counter == "ports") {
				sliceUse[{labels[0].second, labels[1].second}].second = row.value;
			}
			continue;
		}
		if (row.kind == "guard" && row.name == "other") {
			e.add("portslice_guard_other_drops_total", "counter",
			      "Packets the leak guard dropped that belong to no source.", {{}, value});
			continue;
		}
		if (row.kind == "zone")
			continue; // the same as portslice_source_conntrack_entries, by source
		bool known = false;
		for (const Known &k : kKnown) {
			if (row.kind == k.kind && row.counter == k.counter) {
				e.add(k.metric, k.type, k.help, {{{k.label, row.name}}, value});
				known = true;
				break;
			}
		}
		if (!known) {
			std::string metric = "portslice_" + metricPart(row.kind) + "_" + metricPart(row.counter);
			e.add(metric, "gauge", "portsliced Stats() row: kind, counter.", {{{metricPart(row.kind), row.name}}, value});
		}
	}
	for (const auto &[key, use] : sourceUse)
		e.add("portslice_source_ports_in_use_ratio", "gauge",
		      "Distinct ports of the source's own range on the address that its conntrack entries use, over the "
		      "ports of that range (0-1).",
		      {{{"source", key.first}, {"address", key.second}}, ratio(use.first, use.second)});
	for (const auto &[key, use] : sliceUse)
		e.add("portslice_slice_ports_in_use_ratio", "gauge", "Ports of the slice in use over its size (0-1).",
		      {{{"address", key.first}, {"slice", key.second}}, ratio(use.first, use.second)});
	return e.text();
}

Status writeFileAtomically(const std::string &path, const std::string &text)
{
	std::string tmp = path + ".tmp." + std::to_string(::getpid());
	int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return Error(errno, "creating " + tmp);
	size_t done = 0;
	while (done < text.size()) {
		ssize_t n = ::write(fd, text.data() + done, text.size() - done);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			::close(fd);
			::unlink(tmp.c_str());
			return Error(e, "writing " + tmp);
		}
		done += static_cast<size_t>(n);
	}
	int synced = ::fsync(fd) < 0 ? errno : 0;
	int closed = ::close(fd) < 0 ? errno : 0;
	if (synced || closed) {
		::unlink(tmp.c_str());
		return Error(synced ? synced : closed, "writing " + tmp);
	}
	if (::rename(tmp.c_str(), path.c_str()) < 0) {
		int e = errno;
		::unlink(tmp.c_str());
		return Error(e, "renaming " + tmp + " to " + path);
	}
	return {};
}

} // namespace portslice::service
