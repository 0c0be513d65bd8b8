// SPDX-License-Identifier: MIT
// The TOML loader: toml++ document -> Config, every error with its file, line and column.
#include "config/config.h"

#include "config/chunks.h"
#include "config/geo.h"
#include "common/quote.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <set>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <toml++/toml.h>

namespace portslice::config {

const std::string &FileName::empty()
{
	static const std::string kEmpty;
	return kEmpty;
}

const Tags::Map &Tags::none()
{
	static const Map kNone;
	return kNone;
}

std::string Diagnostic::str() const
{
	std::string out = where.file.str().size() > kQuoteLimit ? quoteInput(where.file.str()) : where.file.str(); // a path from the command line
	if (where.line > 0)
		out += ":" + std::to_string(where.line) + ":" + std::to_string(where.column);
	out += severity == Severity::Error ? ": error: " : ": warning: ";
	out += message;
	return out;
}

bool hasErrors(const std::vector<Diagnostic> &diagnostics)
{
	return std::any_of(diagnostics.begin(), diagnostics.end(), [](const Diagnostic &d) {
		return d.severity == Diagnostic::Severity::Error;
	});
}

void sortByPosition(std::vector<Diagnostic> &diagnostics)
{
	std::stable_sort(diagnostics.begin(), diagnostics.end(), [](const Diagnostic &a, const Diagnostic &b) {
		return std::tie(a.where.line, a.where.column) < std::tie(b.where.line, b.where.column);
	});
}

const Server *Config::findServer(std::string_view name) const
{
	for (const Server &s : servers)
		if (s.name == name)
			return &s;
	return nullptr;
}

const Datacenter *Config::findDatacenter(std::string_view name) const
{
	for (const Datacenter &d : datacenters)
		if (d.name == name)
			return &d;
	return nullptr;
}

Address *Config::findAddress(Ipv4 address)
{
	for (Address &a : addresses)
		if (a.address == address)
			return &a;
	return nullptr;
}

const Address *Config::findAddress(Ipv4 address) const
{
	return const_cast<Config *>(this)->findAddress(address);
}

namespace {

size_t editDistance(std::string_view a, std::string_view b)
{
	std::vector<size_t> row(b.size() + 1);
	for (size_t j = 0; j <= b.size(); j++)
		row[j] = j;
	for (size_t i = 1; i <= a.size(); i++) {
		size_t diagonal = row[0];
		row[0] = i;
		for (size_t j = 1; j <= b.size(); j++) {
			size_t above = row[j];
			size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
			row[j] = std::min({ row[j] + 1, row[j - 1] + 1, diagonal + cost });
			diagonal = above;
		}
	}
	return row[b.size()];
}

using Keys = std::initializer_list<std::string_view>;

// The order in which the loader reports errors: by part of the file (the
// unknown top-level keys in key order), then in file order within a part.
enum class Phase : uint8_t { TopLevel, Server, Defaults, Conntrack, Fleet, Datacenters, Servers, Addresses, Sources, Final };

// Builds a Config from a parsed document, or from the chunks of one parsed in
// file order, collecting every error on the way.
class Loader {
public:
	explicit Loader(std::string file) : file_(std::move(file)) {}

	// The line in the file of line 1 of the chunk being loaded, minus one.
	void setLineOffset(uint32_t offset) { lineOffset_ = offset; }

	Location at(const toml::source_region &region) const
	{
		uint32_t line = region.begin.line;
		return Location{ file_, line > 0 ? line + lineOffset_ : 0, region.begin.column };
	}

	void error(const Location &where, std::string message)
	{
		diagnostics_.push_back({ Diagnostic::Severity::Error, where, std::move(message) });
		ranks_.emplace_back(phase_, topKey_);
	}

	void error(const toml::source_region &region, std::string message)
	{
		error(at(region), std::move(message));
	}

	// The diagnostics in the order of a whole-file load, whatever the
	// order in which the chunks brought them.
	std::vector<Diagnostic> take()
	{
		std::vector<size_t> order(diagnostics_.size());
		for (size_t i = 0; i < order.size(); i++)
			order[i] = i;
		std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranks_[a] < ranks_[b]; });
		std::vector<Diagnostic> out;
		out.reserve(order.size());
		for (size_t i : order)
			out.push_back(std::move(diagnostics_[i]));
		diagnostics_.clear();
		ranks_.clear();
		sortByPosition(out);
		return out;
	}

	// Unknown keys are errors: a typo must never be ignored.
	void checkKeys(const toml::table &table, Keys known, const std::string &context)
	{
		for (const auto &[key, node] : table)
			checkKey(key, known, context);
	}

	void checkKey(const toml::key &key, Keys known, const std::string &context)
	{
		std::string_view name = key.str();
		if (std::find(known.begin(), known.end(), name) != known.end())
			return;
		std::string message = "unknown key " + quoteInput(name, '\'') + " in " + context;
		std::string_view best;
		size_t bestDistance = 3;
		for (std::string_view candidate : known) {
			size_t d = editDistance(name, candidate);
			if (d < bestDistance) {
				bestDistance = d;
				best = candidate;
			}
		}
		if (!best.empty())
			message += "; did you mean '" + std::string(best) + "'?";
		else
			message += " (known keys: " + joinKeys(known) + ")";
		error(key.source(), message);
	}

	static std::string joinKeys(Keys known)
	{
		std::string out;
		for (std::string_view k : known)
			out += (out.empty() ? "" : ", ") + std::string(k);
		return out;
	}

	const toml::node *require(const toml::table &table, std::string_view key,
				  const std::string &context)
	{
		const toml::node *node = table.get(key);
		if (!node)
			error(table.source(), context + " lacks required key '" + std::string(key) + "'");
		return node;
	}

	std::optional<std::string> string(const toml::node *node, std::string_view key)
	{
		if (!node)
			return std::nullopt;
		if (auto v = node->value<std::string>())
			return *v;
		error(node->source(), "'" + std::string(key) + "' must be a string");
		return std::nullopt;
	}

	std::optional<int64_t> integer(const toml::node *node, std::string_view key, int64_t lo,
				       int64_t hi)
	{
		if (!node)
			return std::nullopt;
		const auto *v = node->as_integer();
		if (!v) {
			error(node->source(), "'" + std::string(key) + "' must be an integer");
			return std::nullopt;
		}
		int64_t value = v->get();
		if (value < lo || value > hi) {
			error(node->source(), "'" + std::string(key) + "' must be between " +
						      std::to_string(lo) + " and " + std::to_string(hi) +
						      ", not " + std::to_string(value));
			return std::nullopt;
		}
		return value;
	}

	const toml::table *table(const toml::node *node, std::string_view key)
	{
		if (!node)
			return nullptr;
		if (const auto *t = node->as_table())
			return t;
		error(node->source(), "'" + std::string(key) + "' must be a table");
		return nullptr;
	}

	std::optional<Ipv4> ipv4(const toml::node *node, std::string_view key)
	{
		auto text = string(node, key);
		if (!text)
			return std::nullopt;
		auto a = Ipv4::parse(*text);
		if (!a)
			error(node->source(), "'" + std::string(key) + "': invalid IPv4 address " +
						      quoteInput(*text, '\'') + " (expected dotted quad, e.g. 192.0.2.1)");
		return a;
	}

	// A forwarding target or shared address: an address a packet can be
	// sent to and answered from, so none that means this host, the loopback,
	// a group or every host.
	std::optional<Ipv4> unicast(const toml::node *node, std::string_view key)
	{
		auto a = ipv4(node, key);
		if (!a)
			return std::nullopt;
		std::string text = a->str(), why;
		uint32_t v = a->value;
		if (v >> 24 == 0)
			why = text + " is in 0.0.0.0/8 (\"this network\"), not a unicast address";
		else if (v >> 24 == 127)
			why = text + " is a loopback address (127.0.0.0/8), not one of the network";
		else if (v >> 28 == 0xe)
			why = text + " is a multicast address, not a unicast one";
		else if (v == 0xffffffff)
			why = text + " is the broadcast address, not a unicast one";
		else if (v >> 28 == 0xf)
			why = text + " is in the reserved 240.0.0.0/4 (class E), not a unicast address";
		// The address is kept, so that the file's other errors are not
		// followed by ones about the server or address left out.
		if (!why.empty())
			error(node->source(), "'" + std::string(key) + "': " + why);
		return a;
	}

	std::optional<PortRange> portRange(const toml::node *node)
	{
		auto text = string(node, "port_range");
		if (!text)
			return std::nullopt;
		size_t dash = text->find('-');
		auto num = [](std::string_view s) -> std::optional<uint32_t> {
			if (s.empty() || s.size() > 5 ||
			    !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
				return std::nullopt;
			return static_cast<uint32_t>(std::stoul(std::string(s)));
		};
		auto lo = dash == std::string::npos ? std::nullopt : num(std::string_view(*text).substr(0, dash));
		auto hi = dash == std::string::npos ? std::nullopt : num(std::string_view(*text).substr(dash + 1));
		if (!lo || !hi) {
			error(node->source(), "'port_range': expected \"LOW-HIGH\", e.g. \"1024-65535\", not " + quoteInput(*text, '\''));
			return std::nullopt;
		}
		if (*lo == 0 || *hi > 65535) {
			error(node->source(), "'port_range' " + *text + ": ports must be between 1 and 65535");
			return std::nullopt;
		}
		if (*lo > *hi) {
			error(node->source(), "'port_range' " + *text + " is inverted: the low port comes first");
			return std::nullopt;
		}
		return PortRange{ static_cast<uint16_t>(*lo), static_cast<uint16_t>(*hi) };
	}

	std::optional<std::string> ifname(const toml::node *node, std::string_view key)
	{
		auto text = string(node, key);
		if (!text)
			return std::nullopt;
		bool valid = !text->empty() && text->size() < 16 && *text != "." && *text != ".." &&
			     std::none_of(text->begin(), text->end(), [](char c) {
				     return c == '/' || c == ':' || c == '"' || c <= ' ' || c > '~';
			     });
		if (!valid) {
			error(node->source(), "'" + std::string(key) + "': invalid interface name " + quoteInput(*text, '\'') +
						      " (1-15 characters, no '/', ':', quote or space)");
			return std::nullopt;
		}
		return text;
	}

	// The tags a geofeed publishes (RFC 8805): ISO codes, and a city a line can hold.
	void geoTags(const toml::table &t)
	{
		// nullopt: no country tag; "" when it is not a string (tags() says so).
		std::optional<std::string> country;
		if (const toml::node *n = t.get("country")) {
			country = n->value<std::string>().value_or("");
			if (std::optional<std::string> wrong = n->value<std::string>() ? checkCountry(*country) : std::nullopt)
				error(n->source(), "tags." + *wrong);
		}
		if (const toml::node *n = t.get("region"); n && n->value<std::string>()) {
			if (std::optional<std::string> wrong = checkRegion(country, *n->value<std::string>()))
				error(n->source(), "tags." + *wrong);
		}
		if (const toml::node *n = t.get("city"); n && n->value<std::string>()) {
			if (std::optional<std::string> wrong = checkCity(*n->value<std::string>()))
				error(n->source(), "tags." + *wrong);
		}
	}

	Tags tags(const toml::table &t, std::string_view key)
	{
		Tags::Map out;
		for (const auto &[k, v] : t) {
			if (auto s = v.value<std::string>())
				out[std::string(k.str())] = *s;
			else
				error(v.source(), quoteInput(std::string(key) + "." + std::string(k.str()), '\'') +
							  " must be a string");
		}
		if (out.empty())
			return {};
		auto known = tagSets_.find(out);
		if (known == tagSets_.end())
			known = tagSets_.insert(std::make_shared<const Tags::Map>(std::move(out))).first;
		return Tags(*known);
	}

	// The compact form of a sliceMap, naming servers from one table for all
	// the addresses (the servers are all loaded before the addresses).
	SliceOwners owners(const Config &c, const std::map<uint32_t, std::string> &slices)
	{
		if (!serverTable_ || serverTable_->size() != c.servers.size()) {
			auto names = std::make_shared<SliceOwners::Names>();
			for (const Server &s : c.servers)
				names->push_back(s.name);
			serverTable_ = std::move(names);
		}
		SliceOwners out(serverTable_);
		out.reserve(slices.size());
		for (const auto &[index, server] : slices)
			out.emplace(index, server);
		return out;
	}

	// `slices` and `previous`: server -> index or [indices].
	std::map<uint32_t, std::string> sliceMap(const toml::table &t, std::string_view key,
						 std::map<uint32_t, toml::source_region> &where)
	{
		std::map<uint32_t, std::string> out;
		for (const auto &[k, v] : t) {
			std::string server(k.str());
			auto add = [&](const toml::node &n) {
				auto index = integer(&n, key, 0, 65535);
				if (!index)
					return;
				auto [it, inserted] = out.emplace(static_cast<uint32_t>(*index), server);
				if (!inserted && it->second == server) {
					error(n.source(), "slice " + std::to_string(*index) + " is listed twice for '" +
								  server + "'");
					return;
				}
				if (!inserted) {
					error(n.source(), "slice " + std::to_string(*index) + " is given to both '" +
								  it->second + "' and '" + server +
								  "': a slice has one owner at a time");
					return;
				}
				where[static_cast<uint32_t>(*index)] = n.source();
			};
			if (const auto *arr = v.as_array()) {
				for (const toml::node &n : *arr)
					add(n);
			} else {
				add(v);
			}
		}
		return out;
	}

	// One chunk: its keys in the order of a whole-file load, which the
	// chunks allow (splitChunks and fitsOrder): the data centres before the
	// servers, both and [defaults] before the addresses.
	void loadChunk(Config &c, const toml::table &root)
	{
		phase_ = Phase::TopLevel;
		for (const auto &[key, node] : root) {
			// An array of tables spread over chunks is one key.
			if (!topKeys_.emplace(key.str()).second)
				continue;
			topKey_ = key.str();
			checkKey(key, { "server", "defaults", "conntrack", "fleet", "datacenters", "servers", "addresses",
					 "sources" },
				 "the top level");
		}
		topKey_.clear();

		phase_ = Phase::Server;
		const toml::node *serverNode = root.get("server");
		serverSeen_ = serverSeen_ || serverNode;
		if (const auto *server = table(serverNode, "server")) {
			checkKeys(*server, { "name", "uplink" }, "[server]");
			c.serverWhere = at(server->source());
			if (auto n = string(require(*server, "name", "[server]"), "name")) {
				c.serverName = *n;
				serverNameWhere_ = at(server->get("name")->source());
			}
			if (auto u = ifname(require(*server, "uplink", "[server]"), "uplink"))
				c.uplink = *u;
		}

		phase_ = Phase::Defaults;
		if (const auto *defaults = table(root.get("defaults"), "defaults")) {
			checkKeys(*defaults, { "port_range", "slice_size" }, "[defaults]");
			if (const auto *n = defaults->get("port_range"))
				if (auto r = portRange(n))
					c.defaultPortRange = *r;
			if (auto s = integer(defaults->get("slice_size"), "slice_size", 1, 65535))
				c.defaultSliceSize = static_cast<uint32_t>(*s);
			if (c.defaultSliceSize > c.defaultPortRange.size() && defaults->get("slice_size"))
				error(defaults->get("slice_size")->source(),
				      "'slice_size' " + std::to_string(c.defaultSliceSize) +
					      " is larger than the port range (" +
					      std::to_string(c.defaultPortRange.size()) + " ports)");
		}

		phase_ = Phase::Conntrack;
		if (const auto *ct = table(root.get("conntrack"), "conntrack")) {
			checkKeys(*ct, { "max", "buckets", "tcp_timeout_established", "tcp_timeout_time_wait",
					 "udp_timeout", "udp_timeout_stream" },
				  "[conntrack]");
			auto u32 = [&](const char *key, int64_t hi) -> std::optional<uint32_t> {
				if (auto v = integer(ct->get(key), key, 1, hi))
					return static_cast<uint32_t>(*v);
				return std::nullopt;
			};
			// The kernel's limits: nf_conntrack_max is an int; the hash
			// table of nf_conntrack_buckets is one allocation of 8 bytes a
			// bucket, which the kernel refuses above INT_MAX bytes; a
			// timeout is kept in jiffies, an int, so the kernel refuses
			// more than INT_MAX / HZ seconds: 2147483 at HZ=1000, the
			// largest HZ, is what every kernel accepts.
			c.conntrack.max = u32("max", kConntrackMaxLimit);
			c.conntrack.buckets = u32("buckets", kConntrackBucketsLimit);
			c.conntrack.tcpEstablished = u32("tcp_timeout_established", kConntrackTimeoutLimit);
			c.conntrack.tcpTimeWait = u32("tcp_timeout_time_wait", kConntrackTimeoutLimit);
			c.conntrack.udp = u32("udp_timeout", kConntrackTimeoutLimit);
			c.conntrack.udpStream = u32("udp_timeout_stream", kConntrackTimeoutLimit);
		}

		phase_ = Phase::Fleet;
		if (const auto *fleet = table(root.get("fleet"), "fleet"))
			loadFleet(c, *fleet);

		phase_ = Phase::Datacenters;
		forEachTable(root, "datacenters", [&](const toml::table &t) { loadDatacenter(c, t); });
		phase_ = Phase::Servers;
		forEachTable(root, "servers", [&](const toml::table &t) { loadServer(c, t); });
		// Exact room, chunk by chunk: a vector grown by doubling holds up to
		// twice the fleet (10,000 addresses: 1.5 MB of room never used).
		phase_ = Phase::Addresses;
		c.addresses.reserve(c.addresses.size() + tableCount(root, "addresses"));
		forEachTable(root, "addresses", [&](const toml::table &t) { loadAddress(c, t); });
		phase_ = Phase::Sources;
		c.sources.reserve(c.sources.size() + tableCount(root, "sources"));
		forEachTable(root, "sources", [&](const toml::table &t) { loadSource(c, t); });
	}

	void loadFleet(Config &c, const toml::table &t)
	{
		checkKeys(t, { "etcd", "prefix", "lease_seconds", "return_home_seconds", "ca_file", "cert_file",
			       "key_file" },
			  "[fleet]");
		Fleet f;
		f.where = at(t.source());
		if (const toml::node *n = require(t, "etcd", "[fleet]")) {
			const auto *arr = n->as_array();
			if (!arr || arr->empty()) {
				error(n->source(), "'etcd' must be a non-empty array of endpoint URLs, e.g. "
						   "[\"http://192.0.2.100:2379\"]");
			} else {
				for (const toml::node &e : *arr) {
					auto url = string(&e, "etcd");
					if (!url)
						continue;
					std::string normal;
					if (std::string why = checkEtcdUrl(*url, &normal); !why.empty())
						error(e.source(), "'etcd': " + why);
					else
						f.etcd.push_back(normal);
				}
			}
		}
		if (auto p = string(require(t, "prefix", "[fleet]"), "prefix")) {
			if (p->size() < 2 || p->front() != '/' || p->back() == '/' ||
			    std::any_of(p->begin(), p->end(), [](char ch) {
				    return static_cast<unsigned char>(ch) <= ' ' || ch == 0x7f;
			    }))
				error(t.get("prefix")->source(), "'prefix' must start with '/', not end with '/' and hold "
								 "no space or control character, e.g. \"/portslice/lab1\", not " +
								 quoteInput(*p, '\''));
			else
				f.prefix = *p;
		}
		if (auto v = integer(t.get("lease_seconds"), "lease_seconds", 1, 3600))
			f.leaseSeconds = static_cast<uint32_t>(*v);
		if (auto v = integer(t.get("return_home_seconds"), "return_home_seconds", 0, 86400 * 7))
			f.returnHomeSeconds = static_cast<uint32_t>(*v);
		auto path = [&](const char *key, std::string &out) {
			if (auto v = string(t.get(key), key)) {
				if (v->empty() || v->front() != '/')
					error(t.get(key)->source(), "'" + std::string(key) + "' must be an absolute path, not " +
									  quoteInput(*v, '\''));
				else
					out = *v;
			}
		};
		path("ca_file", f.caFile);
		path("cert_file", f.certFile);
		path("key_file", f.keyFile);
		if (f.certFile.empty() != f.keyFile.empty())
			error(t.source(), "[fleet] needs both 'cert_file' and 'key_file' for a client certificate, or neither");
		c.fleet = std::move(f);
	}

	// After the last chunk: what needs the whole file.
	void finish(Config &c)
	{
		if (!serverSeen_) {
			phase_ = Phase::Server;
			// Where a whole-file load reports it: the document's 1:1.
			error(Location{ file_, 1, 1 }, "the file lacks required key 'server'");
		}
		phase_ = Phase::Final;
		if (!c.serverName.empty() && !c.findServer(c.serverName) && !c.servers.empty())
			error(serverNameWhere_, "[server] name " + quoteInput(c.serverName, '\'') +
							" is not one of [[servers]]" + knownNames(c.servers));
	}

	// " (known: a, b)", each name once (a duplicate name is its own error).
	template<class T>
	static std::string knownNames(const std::vector<T> &items)
	{
		std::string out;
		std::unordered_set<std::string_view> seen;
		for (const T &i : items)
			if (seen.insert(i.name).second)
				out += (out.empty() ? " (known: " : ", ") + i.name;
		return out.empty() ? out : out + ")";
	}

	static size_t tableCount(const toml::table &root, std::string_view key)
	{
		const toml::node *node = root.get(key);
		const auto *arr = node ? node->as_array() : nullptr;
		return arr ? arr->size() : 0;
	}

	template<class F>
	void forEachTable(const toml::table &root, std::string_view key, F &&f)
	{
		const toml::node *node = root.get(key);
		if (!node)
			return;
		const auto *arr = node->as_array();
		if (!arr) {
			error(node->source(), "'" + std::string(key) + "' must be an array of tables: write [[" +
						      std::string(key) + "]]");
			return;
		}
		for (const toml::node &n : *arr) {
			if (const auto *t = n.as_table())
				f(*t);
			else
				error(n.source(), "each entry of '" + std::string(key) + "' must be a table");
		}
	}

	void loadDatacenter(Config &c, const toml::table &t)
	{
		checkKeys(t, { "name", "gateway" }, "[[datacenters]]");
		Datacenter d;
		d.where = at(t.source());
		auto name = string(require(t, "name", "[[datacenters]]"), "name");
		if (const auto *g = t.get("gateway"))
			d.gateway = unicast(g, "gateway");
		if (name && name->empty()) {
			error(t.get("name")->source(), "data centre name must not be empty");
			return;
		}
		if (!name)
			return;
		d.name = *name;
		if (c.findDatacenter(d.name)) {
			error(t.get("name")->source(), "duplicate data centre name " + quoteInput(d.name, '\''));
			return;
		}
		c.datacenters.push_back(d);
	}

	void loadServer(Config &c, const toml::table &t)
	{
		checkKeys(t, { "name", "address", "datacenter", "mac" }, "[[servers]]");
		Server s;
		s.where = at(t.source());
		auto name = string(require(t, "name", "[[servers]]"), "name");
		// The table's comment names the server, and the kernel keeps at
		// most 256 bytes of it.
		if (name && (name->empty() || name->size() > kServerNameLimit)) {
			error(t.get("name")->source(), "server name " + quoteInput(*name, '\'') + " must be 1-" +
							       std::to_string(kServerNameLimit) +
							       " characters (it names the nftables table's comment)");
			name.reset();
		}
		auto address = unicast(require(t, "address", "[[servers]]"), "address");
		auto dc = string(require(t, "datacenter", "[[servers]]"), "datacenter");
		if (const auto *m = t.get("mac")) {
			if (auto text = string(m, "mac")) {
				s.mac = Mac::parse(*text);
				if (!s.mac) {
					error(m->source(), "'mac': invalid MAC address " + quoteInput(*text, '\'') +
								   " (expected six hex bytes, e.g. 02:00:00:00:00:11)");
				} else if (s.mac->bytes == Mac{ { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff } }.bytes) {
					error(m->source(), "'mac': " + s.mac->str() +
								   " is the broadcast address, not one server's");
					s.mac.reset();
				} else if (s.mac->bytes[0] & 1) {
					error(m->source(), "'mac': " + s.mac->str() +
								   " is a multicast address (the low bit of its first byte is set), "
								   "not one server's");
					s.mac.reset();
				} else if (s.mac->bytes == Mac{}.bytes) {
					error(m->source(), "'mac': 00:00:00:00:00:00 is no interface's address");
					s.mac.reset();
				}
			}
		}
		if (dc && !c.findDatacenter(*dc)) {
			error(t.get("datacenter")->source(), "server '" + name.value_or("?") +
								     "' names unknown data centre " + quoteInput(*dc, '\'') +
								     knownNames(c.datacenters));
		}
		if (!name || !address || !dc)
			return;
		s.name = *name;
		s.address = *address;
		s.datacenter = *dc;
		for (const Server &other : c.servers) {
			if (other.name == s.name)
				error(t.get("name")->source(), "duplicate server name '" + s.name + "'");
			else if (other.address == s.address)
				error(t.get("address")->source(), "servers '" + other.name + "' and '" + s.name +
									  "' have the same address " + s.address.str());
		}
		serverNames_.insert(s.name);
		c.servers.push_back(s);
	}

	void loadAddress(Config &c, const toml::table &t)
	{
		checkKeys(t, { "address", "datacenter", "tags", "port_range", "slice_size", "slices", "previous" },
			  "[[addresses]]");
		Address a;
		a.where = at(t.source());
		auto address = unicast(require(t, "address", "[[addresses]]"), "address");
		auto dc = string(require(t, "datacenter", "[[addresses]]"), "datacenter");
		const toml::table *tagTable = table(require(t, "tags", "[[addresses]]"), "tags");
		const toml::table *sliceTable = table(require(t, "slices", "[[addresses]]"), "slices");
		a.portRange = c.defaultPortRange;
		a.sliceSize = c.defaultSliceSize;
		if (const auto *n = t.get("port_range")) {
			if (auto r = portRange(n))
				a.portRange = *r;
		}
		const toml::node *sizeNode = t.get("slice_size");
		if (auto s = integer(sizeNode, "slice_size", 1, 65535))
			a.sliceSize = static_cast<uint32_t>(*s);
		if (a.sliceSize > a.portRange.size()) {
			error(sizeNode ? sizeNode->source() : t.source(),
			      "slice size " + std::to_string(a.sliceSize) + " is larger than the port range " +
				      std::to_string(a.portRange.lo) + "-" + std::to_string(a.portRange.hi) +
				      " (" + std::to_string(a.portRange.size()) + " ports)");
			return;
		}
		if (dc && !c.findDatacenter(*dc))
			error(t.get("datacenter")->source(), "address names unknown data centre " + quoteInput(*dc, '\'') +
								     knownNames(c.datacenters));
		if (tagTable) {
			a.tags = tags(*tagTable, "tags");
			geoTags(*tagTable);
		}
		std::map<uint32_t, toml::source_region> sliceWhere;
		if (sliceTable) {
			a.slicesWhere = at(sliceTable->source());
			a.owners = owners(c, sliceMap(*sliceTable, "slices", sliceWhere));
		}
		std::map<uint32_t, toml::source_region> previousWhere;
		if (const auto *prev = table(t.get("previous"), "previous"))
			a.previous = owners(c, sliceMap(*prev, "previous", previousWhere));
		if (!address || !dc)
			return;
		a.address = *address;
		a.datacenter = *dc;
		// An unknown server once, at its first slice, however many it lists.
		std::set<std::string_view> unknown;
		for (const auto &[index, server] : a.owners) {
			const toml::source_region &w = sliceWhere[index];
			if (index >= a.sliceCount())
				error(w, "slice " + std::to_string(index) + " is beyond the port range of " +
						 a.address.str() + ": it has " + std::to_string(a.sliceCount()) +
						 " slices of " + std::to_string(a.sliceSize) + " ports (0-" +
						 std::to_string(a.sliceCount() - 1) + ")");
			if (!serverNames_.count(server) && unknown.insert(server).second)
				error(w, "slices of " + a.address.str() + " name unknown server " + quoteInput(server, '\'') +
						 knownNames(c.servers));
		}
		unknown.clear();
		for (const auto &[index, server] : a.previous) {
			const toml::source_region &w = previousWhere[index];
			if (index >= a.sliceCount())
				error(w, "previous owner of slice " + std::to_string(index) + ": no such slice on " +
						 a.address.str());
			if (!serverNames_.count(server) && unknown.insert(server).second)
				error(w, "'previous' names unknown server " + quoteInput(server, '\'') + knownNames(c.servers));
		}
		if (!addressesSeen_.insert(a.address.value).second) {
			error(t.get("address")->source(), "duplicate shared address " + a.address.str());
			return;
		}
		for (const Server &s : c.servers)
			if (s.address == a.address)
				error(t.get("address")->source(), "shared address " + a.address.str() +
									  " is also the unicast address of server '" + s.name + "'");
		c.addresses.push_back(std::move(a));
	}

	void loadSource(Config &c, const toml::table &t)
	{
		checkKeys(t, { "name", "match", "want", "nat", "block", "weight", "zone" }, "[[sources]]");
		Source s;
		s.where = at(t.source());
		auto name = string(require(t, "name", "[[sources]]"), "name");
		const toml::table *match = table(require(t, "match", "[[sources]]"), "match");
		const toml::table *want = table(require(t, "want", "[[sources]]"), "want");
		if (match) {
			checkKeys(*match, { "saddr", "iifname", "mark", "cgroup", "uid" }, "match");
			if (match->empty())
				error(match->source(), "'match' needs one or more of: saddr, iifname, mark, cgroup, uid");
			if (const auto *n = match->get("saddr")) {
				if (auto text = string(n, "saddr")) {
					s.match.saddr = Prefix::parse(*text);
					if (!s.match.saddr)
						error(n->source(), "'saddr': invalid prefix " + quoteInput(*text, '\'') +
									   " (expected ADDRESS/LENGTH with no host bits set, e.g. 100.64.1.0/24)");
				}
			}
			if (const auto *n = match->get("iifname"))
				s.match.iifname = ifname(n, "iifname");
			if (auto v = integer(match->get("mark"), "mark", 0, 0xffffffff))
				s.match.mark = static_cast<uint32_t>(*v);
			if (auto v = integer(match->get("cgroup"), "cgroup", 0, 0xffffffff))
				s.match.cgroup = static_cast<uint32_t>(*v);
			if (auto v = integer(match->get("uid"), "uid", 0, 0xffffffff))
				s.match.uid = static_cast<uint32_t>(*v);
		}
		if (want)
			s.want = tags(*want, "want");
		if (const auto *n = t.get("nat")) {
			if (auto mode = string(n, "nat")) {
				if (*mode == "stateless")
					s.nat = NatMode::Stateless;
				else if (*mode != "conntrack")
					error(n->source(), "'nat' must be \"conntrack\" or \"stateless\", not " + quoteInput(*mode));
			}
		}
		if (const auto *n = t.get("block")) {
			s.blockWhere = at(n->source());
			if (auto v = integer(n, "block", 1, 65535))
				s.block = static_cast<uint32_t>(*v);
			if (s.nat == NatMode::Conntrack)
				error(n->source(), "'block' applies only to nat = \"stateless\"; a conntrack source shares its ports by 'weight'");
		}
		if (s.nat == NatMode::Stateless) {
			if (!t.get("block"))
				error(t.source(), "stateless source '" + name.value_or("?") + "' needs 'block' (ports per inside address)");
			if (match && !match->get("saddr"))
				error(match->source(), "stateless source '" + name.value_or("?") + "' needs 'saddr' in 'match': its blocks are per inside address");
		}
		if (auto v = integer(t.get("weight"), "weight", 1, 1000000))
			s.weight = static_cast<uint32_t>(*v);
		if (auto v = integer(t.get("zone"), "zone", 1, 65535))
			s.zone = static_cast<uint16_t>(*v);
		if (!name)
			return;
		s.name = *name;
		bool validName = !s.name.empty() && s.name.size() <= 64 &&
				 std::all_of(s.name.begin(), s.name.end(), [](char ch) {
					 return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.';
				 });
		if (!validName) {
			error(t.get("name")->source(), "source name " + quoteInput(s.name, '\'') +
							       " must be 1-64 letters, digits, '-', '_' or '.' (it names nftables counters)");
			return;
		}
		// Compared with the earlier sources through indexes, not a scan of
		// all of them (fleets have 100k sources), with the diagnostics of
		// the scan: per earlier source in file order, its zone, match and
		// overlap errors, up to the first one of the same name.
		const size_t index = c.sources.size();
		auto named = sourceNames_.find(s.name);
		const size_t limit = named == sourceNames_.end() ? index : named->second;
		struct Finding {
			size_t other;
			int kind; // the order of the checks against one source
			Location where;
			std::string message;
		};
		std::vector<Finding> findings;
		if (s.zone) {
			for (size_t o : zones_[*s.zone])
				if (o < limit)
					findings.push_back({ o, 0, at(t.get("zone")->source()),
							     "zone " + std::to_string(*s.zone) + " is already used by source '" +
								     c.sources[o].name + "': each source needs its own zone" });
		}
		if (match) {
			for (size_t o : matches_[s.match])
				if (o < limit)
					findings.push_back({ o, 1, at(match->source()),
							     "source '" + s.name + "' matches exactly what source '" +
								     c.sources[o].name + "' matches: packets could not tell them apart" });
		}
		if (s.nat == NatMode::Stateless && s.match.saddr) {
			// Prefixes are nested or disjoint: an earlier one overlaps this
			// one if it starts inside it, or if it is one of its (at most
			// 32) enclosing prefixes.
			const Prefix &mine = *s.match.saddr;
			std::vector<size_t> overlapping;
			for (auto it = statelessPrefixes_.lower_bound(mine.first().value);
			     it != statelessPrefixes_.end() && it->first <= mine.last().value; ++it)
				overlapping.push_back(it->second);
			for (uint8_t length = 0; length < mine.length; length++) {
				uint32_t first = mine.first().value & prefixMask(length);
				if (first == mine.first().value)
					continue; // found above
				auto [lo, hi] = statelessPrefixes_.equal_range(first);
				for (auto it = lo; it != hi; ++it)
					if (c.sources[it->second].match.saddr->length == length)
						overlapping.push_back(it->second);
			}
			for (size_t o : overlapping) {
				if (o >= limit)
					continue;
				const Source &other = c.sources[o];
				findings.push_back({ o, 2, at(match->get("saddr")->source()),
						     "stateless sources '" + other.name + "' and '" + s.name + "' overlap (" +
							     other.match.saddr->str() + ", " + s.match.saddr->str() +
							     "): stateless inside addresses must be unique" });
			}
		}
		std::sort(findings.begin(), findings.end(), [](const Finding &a, const Finding &b) {
			return std::tie(a.other, a.kind) < std::tie(b.other, b.kind);
		});
		for (Finding &f : findings)
			error(f.where, std::move(f.message));
		if (named != sourceNames_.end()) {
			error(t.get("name")->source(), "duplicate source name '" + s.name + "'");
			return;
		}
		sourceNames_.emplace(s.name, index);
		if (s.zone)
			zones_[*s.zone].push_back(index);
		matches_[s.match].push_back(index);
		if (s.nat == NatMode::Stateless && s.match.saddr)
			statelessPrefixes_.emplace(s.match.saddr->first().value, index);
		c.sources.push_back(std::move(s));
	}

private:
	FileName file_; // one string for all the Locations
	uint32_t lineOffset_ = 0;
	Location serverNameWhere_;
	bool serverSeen_ = false;
	std::vector<Diagnostic> diagnostics_;
	// Per diagnostic, where a whole-file load would report it (see take()).
	Phase phase_ = Phase::TopLevel;
	std::string topKey_;
	std::vector<std::pair<Phase, std::string>> ranks_;
	std::unordered_set<std::string> topKeys_;
	// What the duplicate checks look up, so that loading stays linear.
	std::unordered_set<std::string> serverNames_;
	std::shared_ptr<const SliceOwners::Names> serverTable_;
	std::unordered_set<uint32_t> addressesSeen_;
	// Every distinct tag set, once (see Tags).
	struct ByMap {
		using is_transparent = void;
		static const Tags::Map &of(const Tags::Map &m) { return m; }
		static const Tags::Map &of(const std::shared_ptr<const Tags::Map> &m) { return *m; }
		bool operator()(const auto &a, const auto &b) const { return of(a) < of(b); }
	};
	std::set<std::shared_ptr<const Tags::Map>, ByMap> tagSets_;
	// Name, zone, match, first inside address of a stateless prefix -> the
	// sources that have it (indices into Config::sources).
	std::unordered_map<std::string, size_t> sourceNames_;
	std::unordered_map<uint16_t, std::vector<size_t>> zones_;
	std::map<Match, std::vector<size_t>> matches_;
	std::multimap<uint32_t, size_t> statelessPrefixes_;
};

} // namespace

std::string checkEtcdUrl(std::string_view url, std::string *normal)
{
	std::string quoted = quoteInput(url, '\'');
	// Schemes are case-insensitive (RFC 3986 section 3.1).
	auto hasScheme = [&](std::string_view scheme) {
		return url.size() >= scheme.size() &&
		       std::equal(scheme.begin(), scheme.end(), url.begin(), [](char a, char b) {
			       return a == std::tolower(static_cast<unsigned char>(b));
		       });
	};
	std::string_view rest, scheme;
	if (hasScheme("http://"))
		scheme = "http://";
	else if (hasScheme("https://"))
		scheme = "https://";
	else
		return quoted + " is not an http:// or https:// URL (e.g. \"http://192.0.2.100:2379\")";
	rest = url.substr(scheme.size());
	if (rest.ends_with('/'))
		rest.remove_suffix(1);
	if (rest.find_first_of("/?#@ ") != std::string_view::npos)
		return quoted + ": give only the scheme, host and port, e.g. \"https://etcd1.example:2379\"";
	std::string_view host = rest, port;
	if (rest.starts_with('[')) {
		size_t close = rest.find(']');
		if (close == std::string_view::npos)
			return quoted + ": unclosed '[' of an IPv6 address";
		host = rest.substr(0, close + 1);
		std::string_view after = rest.substr(close + 1);
		if (!after.empty()) {
			if (after.front() != ':')
				return quoted + ": expected ':PORT' after the IPv6 address";
			port = after.substr(1);
		}
	} else if (size_t colon = rest.rfind(':'); colon != std::string_view::npos) {
		host = rest.substr(0, colon);
		port = rest.substr(colon + 1);
		if (port.empty())
			return quoted + ": empty port after ':'";
	}
	if (host.empty() || host == "[]")
		return quoted + " names no host";
	bool bracketed = host.front() == '[';
	if (!bracketed && host.find_first_of("[]:") != std::string_view::npos)
		return quoted + ": an IPv6 address goes in brackets, e.g. \"http://[2001:db8::1]:2379\"";
	for (char ch : host)
		if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-' || ch == '_' ||
		      (bracketed && (ch == '[' || ch == ']' || ch == ':'))))
			return quoted + ": invalid character '" + std::string(1, ch) + "' in the host";
	if (!port.empty()) {
		if (port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
			return quoted + ": the port must be a number from 1 to 65535";
		unsigned long p = std::stoul(std::string(port));
		if (p == 0 || p > 65535)
			return quoted + ": the port must be a number from 1 to 65535";
	}
	if (normal)
		*normal = std::string(scheme) + std::string(host) + ":" +
			  (port.empty() ? std::to_string(kEtcdDefaultPort) : std::string(port));
	return {};
}

std::vector<Diagnostic> validate(const Config &config)
{
	std::vector<Diagnostic> out;
	auto err = [&](const Location &w, std::string m) {
		out.push_back({ Diagnostic::Severity::Error, w, std::move(m) });
	};
	for (const Address &a : config.addresses) {
		for (const auto &[index, server] : a.owners) {
			if (index >= a.sliceCount())
				err(a.slicesWhere, "slice " + std::to_string(index) + " is beyond the port range of " + a.address.str());
			if (!config.findServer(server))
				err(a.slicesWhere, "slice " + std::to_string(index) + " of " + a.address.str() +
							   " names unknown server " + quoteInput(server, '\''));
		}
	}
	if (!config.findServer(config.serverName))
		err(config.serverWhere, "[server] name " + quoteInput(config.serverName, '\'') + " is not one of [[servers]]");
	sortByPosition(out);
	return out;
}

namespace {

// Whether the keys of the chunks, with `preamble` (what the first chunk defines
// before its first header) in the first, come in an order in which loading
// the chunks one by one sees what a whole-file load sees: no data centre after
// a server or an address, no server after an address, [defaults] before the
// addresses (Loader::loadChunk takes the keys of one chunk in that order).
bool fitsOrder(const std::vector<Chunk> &chunks, const std::vector<std::string> &preamble)
{
	constexpr size_t kNone = SIZE_MAX;
	std::map<std::string_view, std::pair<size_t, size_t>> seen; // key -> first and last chunk
	auto note = [&](std::string_view key, size_t chunk) {
		auto [it, inserted] = seen.emplace(key, std::make_pair(chunk, chunk));
		if (!inserted)
			it->second.second = chunk;
	};
	for (const std::string &k : preamble)
		note(k, 0);
	for (size_t i = 0; i < chunks.size(); i++)
		for (const std::string &k : chunks[i].keys)
			note(k, i);
	auto first = [&](std::string_view k) { auto it = seen.find(k); return it == seen.end() ? kNone : it->second.first; };
	auto last = [&](std::string_view k) { auto it = seen.find(k); return it == seen.end() ? 0 : it->second.second; };
	const std::pair<const char *, const char *> kBefore[] = {
		{ "datacenters", "servers" }, { "datacenters", "addresses" }, { "servers", "addresses" }, { "defaults", "addresses" }
	};
	for (const auto &[before, after] : kBefore)
		if (first(after) != kNone && last(before) > first(after))
			return false;
	return true;
}

// Loads the chunks in file order. nullopt: the chunked load cannot promise the
// whole-file result (a syntax error, which toml++ must report as it does on
// the whole text, or keys the chunk was not expected to hold); the caller
// loads the text as one chunk, which always gives a result.
std::optional<LoadResult> loadChunks(const std::vector<Chunk> &chunks, const std::string &name)
{
	const bool whole = chunks.size() == 1;
	LoadResult result;
	Loader loader(name);
	Config config;
	config.file = name;
	for (size_t i = 0; i < chunks.size(); i++) {
		toml::table root;
		try {
			root = toml::parse(chunks[i].text, name);
		} catch (const toml::parse_error &e) {
			if (!whole)
				return std::nullopt;
			loader.error(e.source(), std::string(e.description()));
			result.diagnostics = loader.take();
			return result;
		}
		if (!whole) {
			const std::vector<std::string> &keys = chunks[i].keys;
			std::vector<std::string> preamble;
			for (const auto &[key, node] : root) {
				if (std::find(keys.begin(), keys.end(), key.str()) != keys.end())
					continue;
				if (i > 0)
					return std::nullopt; // the scanner missed a header
				preamble.emplace_back(key.str());
			}
			if (i == 0) {
				// A key defined before the first header may not be
				// given again by a header of a later chunk.
				for (size_t j = 1; j < chunks.size(); j++)
					for (const std::string &k : chunks[j].keys)
						if (std::find(preamble.begin(), preamble.end(), k) != preamble.end())
							return std::nullopt;
				if (!fitsOrder(chunks, preamble))
					return std::nullopt;
			}
		}
		loader.setLineOffset(chunks[i].firstLine - 1);
		loader.loadChunk(config, root);
	}
	loader.finish(config);
	result.chunks = chunks.size();
	result.diagnostics = loader.take();
	if (!hasErrors(result.diagnostics))
		result.config = std::move(config);
	return result;
}

} // namespace

LoadResult loadString(std::string_view text, const std::string &name, size_t chunkBytes)
{
	// Chunks keep toml++'s document (about 20 times the text) to one chunk
	// at a time: docs/performance.md, "Memory".
	if (chunkBytes == 0)
		chunkBytes = std::max(kChunkBytes, text.size() / kMaxChunks);
	if (auto chunks = splitChunks(text, chunkBytes); chunks && chunks->size() > 1)
		if (auto result = loadChunks(*chunks, name))
			return std::move(*result);
	return std::move(*loadChunks({ Chunk{ text, 1, {} } }, name));
}

std::optional<std::string> readText(const std::string &path)
{
	// read(2), not a stream: a pipe (--config /dev/stdin, <(...)) cannot
	// seek, and a directory opens but its size is no size of text; read(2)
	// says EISDIR for it.
	int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return std::nullopt;
	std::string text;
	struct stat st{};
	if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
		text.reserve(static_cast<size_t>(st.st_size));
	char buffer[64 * 1024];
	for (;;) {
		ssize_t n = ::read(fd, buffer, sizeof(buffer));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int saved = errno;
			::close(fd);
			errno = saved;
			return std::nullopt;
		}
		if (n == 0)
			break;
		text.append(buffer, static_cast<size_t>(n));
	}
	::close(fd);
	return text;
}

LoadResult loadFile(const std::string &path)
{
	std::optional<std::string> text = readText(path);
	if (!text) {
		LoadResult result;
		result.diagnostics.push_back({ Diagnostic::Severity::Error, Location{ path, 0, 0 },
					       "cannot read config file: " + std::string(std::strerror(errno)) });
		return result;
	}
	return loadString(*text, path);
}

} // namespace portslice::config
