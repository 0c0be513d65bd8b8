// SPDX-License-Identifier: MIT
// Loads the XDP forwarder, keeps it attached through a pinned bpf_link, and syncs its maps from a Plan.
#include "xdp/forwarder.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <unordered_map>

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wold-style-cast"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#include "xdp/forwarder.skel.h"
#pragma GCC diagnostic pop

namespace portslice::xdp {

namespace {

using plan::PortRange;

constexpr const char *kVerdictNames[kVerdictCount] = {
	"pass_other", "pass_own", "forward", "second_hop", "remote_dc", "decap", "icmp_pass",
	"icmp_forward", "fragment", "malformed", "unowned", "no_neigh", "error",
};

constexpr const char *kMapNames[] = {FWD_NAME(FWD_MAP_CONFIG), FWD_NAME(FWD_MAP_ADDRS), FWD_NAME(FWD_MAP_SLICES),
				     FWD_NAME(FWD_MAP_PEERS), FWD_NAME(FWD_MAP_COUNTERS)};

using BpfLinkHandle = Handle<bpf_link, bpf_link__destroy>;

Error errnoError(int err, const std::string &context)
{
	return Error(err < 0 ? -err : err, context);
}

std::string pinPath(const std::string &dir, const char *name)
{
	return dir + "/" + name;
}

void copyMac(uint8_t *to, const Mac &mac)
{
	std::memcpy(to, mac.bytes.data(), mac.bytes.size());
}

std::optional<Mac> macOf(const plan::PlannedServer &server, const NeighbourTable &neighbours)
{
	if (server.mac)
		return server.mac;
	auto it = neighbours.find(server.address.value);
	if (it != neighbours.end())
		return it->second;
	return std::nullopt;
}

// Conntrack zones of this server's shares, per address: [lo, hi] -> zone, sorted.
struct ZoneRun {
	PortRange ports;
	uint16_t zone;
};

std::vector<std::vector<ZoneRun>> zoneRuns(const plan::Plan &plan)
{
	std::vector<std::vector<ZoneRun>> runs(plan.addresses.size());
	for (const auto &source : plan.sources) {
		uint16_t zone = source.mode == config::NatMode::Stateless ? uint16_t{FWD_ZONE_STATELESS}
									  : source.zone;
		for (const auto &a : source.assignments)
			if (a.address < runs.size())
				runs[a.address].push_back({a.ports, zone});
	}
	for (auto &r : runs)
		std::sort(r.begin(), r.end(), [](const ZoneRun &x, const ZoneRun &y) { return x.ports.lo < y.ports.lo; });
	return runs;
}

void fillZones(fwd_slice &value, const std::vector<ZoneRun> &runs, PortRange slice)
{
	int n = 0;
	for (const auto &run : runs) {
		if (run.ports.hi < slice.lo || run.ports.lo > slice.hi)
			continue;
		uint16_t end = std::min(run.ports.hi, slice.hi);
		if (n > 0 && value.zone_id[n - 1] == run.zone) {
			value.zone_end[n - 1] = end; // adjacent share of the same zone: one run
			continue;
		}
		if (n == FWD_ZONE_RUNS)
			break; // documented: later shares of a crowded slice are looked up in zone 0
		value.zone_end[n] = end;
		value.zone_id[n] = run.zone;
		n++;
	}
}

template<class K>
std::string keyBytes(const K &key)
{
	return std::string(reinterpret_cast<const char *>(&key), sizeof(key));
}

// Make a hash map hold exactly `want`: update what differs, then delete what is stale.
template<class K, class V>
Status syncHash(int fd, const std::vector<std::pair<K, V>> &want, const char *name)
{
	std::unordered_map<std::string, const V *> wanted;
	wanted.reserve(want.size());
	for (const auto &[k, v] : want)
		wanted.emplace(keyBytes(k), &v);

	std::vector<K> stale;
	std::unordered_map<std::string, bool> same;
	K key{};
	K next{};
	const void *prev = nullptr;
	V current{};
	while (bpf_map_get_next_key(fd, prev, &next) == 0) {
		auto it = wanted.find(keyBytes(next));
		if (it == wanted.end())
			stale.push_back(next);
		else if (bpf_map_lookup_elem(fd, &next, &current) == 0 &&
			 std::memcmp(&current, it->second, sizeof(V)) == 0)
			same.emplace(it->first, true);
		key = next;
		prev = &key;
	}
	for (const auto &[k, v] : want) {
		if (same.count(keyBytes(k)))
			continue;
		if (bpf_map_update_elem(fd, &k, &v, BPF_ANY) != 0)
			return errnoError(errno, std::string("updating map ") + name);
	}
	for (const auto &k : stale)
		if (bpf_map_delete_elem(fd, &k) != 0 && errno != ENOENT)
			return errnoError(errno, std::string("deleting from map ") + name);
	return {};
}

Result<Mac> interfaceMac(const std::string &name)
{
	UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
	if (!fd.isValid())
		return errnoError(errno, "socket");
	ifreq req{};
	std::strncpy(req.ifr_name, name.c_str(), IFNAMSIZ - 1);
	if (::ioctl(fd.get(), SIOCGIFHWADDR, &req) != 0)
		return errnoError(errno, "reading the MAC address of " + name);
	Mac mac;
	std::memcpy(mac.bytes.data(), req.ifr_hwaddr.sa_data, mac.bytes.size());
	return mac;
}

struct Pinned {
	UniqueFd fd;
	static Result<Pinned> open(const std::string &path)
	{
		int fd = bpf_obj_get(path.c_str());
		if (fd < 0)
			return errnoError(errno, "opening pinned " + path);
		return Pinned{UniqueFd(fd)};
	}
};

Result<std::array<UniqueFd, 5>> openPinnedMaps(const std::string &pinDir)
{
	std::array<UniqueFd, 5> fds;
	for (size_t i = 0; i < fds.size(); i++) {
		auto p = Pinned::open(pinPath(pinDir, kMapNames[i]));
		if (!p)
			return p.error();
		fds[i] = std::move(p->fd);
	}
	return fds;
}

MapFds borrow(const std::array<UniqueFd, 5> &fds)
{
	return MapFds{fds[0].get(), fds[1].get(), fds[2].get(), fds[3].get(), fds[4].get()};
}

} // namespace

std::string_view verdictName(uint32_t verdict)
{
	return verdict < kVerdictCount ? kVerdictNames[verdict] : "unknown";
}

Result<NeighbourTable> readNeighbours(uint32_t ifindex)
{
	UniqueFd fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
	if (!fd.isValid())
		return errnoError(errno, "reading neighbours: netlink socket");
	struct {
		nlmsghdr nh;
		ndmsg nd;
	} req{};
	req.nh.nlmsg_len = sizeof(req);
	req.nh.nlmsg_type = RTM_GETNEIGH;
	req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.nh.nlmsg_seq = 1;
	req.nd.ndm_family = AF_INET;
	if (::send(fd.get(), &req, sizeof(req), 0) < 0)
		return errnoError(errno, "reading neighbours: send");

	NeighbourTable table;
	std::vector<char> buf(32768);
	for (;;) {
		ssize_t n = ::recv(fd.get(), buf.data(), buf.size(), 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errnoError(errno, "reading neighbours: recv");
		}
		int len = static_cast<int>(n);
		for (auto *nh = reinterpret_cast<nlmsghdr *>(buf.data()); NLMSG_OK(nh, len); nh = NLMSG_NEXT(nh, len)) {
			if (nh->nlmsg_type == NLMSG_DONE)
				return table;
			if (nh->nlmsg_type == NLMSG_ERROR) {
				auto *err = static_cast<nlmsgerr *>(NLMSG_DATA(nh));
				return errnoError(err->error, "reading neighbours");
			}
			if (nh->nlmsg_type != RTM_NEWNEIGH)
				continue;
			auto *nd = static_cast<ndmsg *>(NLMSG_DATA(nh));
			if (nd->ndm_family != AF_INET || static_cast<uint32_t>(nd->ndm_ifindex) != ifindex)
				continue;
			if (nd->ndm_state & (NUD_INCOMPLETE | NUD_FAILED | NUD_NOARP))
				continue;
			std::optional<uint32_t> ip;
			std::optional<Mac> mac;
			int alen = static_cast<int>(RTM_PAYLOAD(nh));
			for (auto *rta = reinterpret_cast<rtattr *>(reinterpret_cast<char *>(nd) + NLMSG_ALIGN(sizeof(*nd)));
			     RTA_OK(rta, alen); rta = RTA_NEXT(rta, alen)) {
				if (rta->rta_type == NDA_DST && RTA_PAYLOAD(rta) == 4) {
					uint32_t be;
					std::memcpy(&be, RTA_DATA(rta), 4);
					ip = ntohl(be);
				} else if (rta->rta_type == NDA_LLADDR && RTA_PAYLOAD(rta) == 6) {
					Mac m;
					std::memcpy(m.bytes.data(), RTA_DATA(rta), 6);
					mac = m;
				}
			}
			if (ip && mac)
				table[*ip] = *mac;
		}
	}
}

ForwarderTables buildTables(const plan::Plan &plan, const Mac &uplinkMac, uint32_t ifindex,
			    const NeighbourTable &neighbours)
{
	ForwarderTables t;
	const auto &self = plan.self();
	t.config.self_addr = self.address.networkOrder();
	t.config.uplink_ifindex = ifindex;
	copyMac(t.config.self_mac, uplinkMac);
	t.config.object_hash = ForwarderObject::objectHash();

	std::vector<std::optional<Mac>> macs;
	for (size_t i = 0; i < plan.servers.size(); i++) {
		const auto &server = plan.servers[i];
		macs.push_back(macOf(server, neighbours));
		if (i == plan.serverIndex)
			continue;
		t.peers.push_back({server.address.networkOrder(), fwd_peer{static_cast<uint32_t>(i)}});
		if (!macs.back())
			t.unresolved.push_back("server " + server.name + " (" + server.address.str() + ")");
	}

	auto runs = zoneRuns(plan);
	auto valid = [&](int32_t s) { return s >= 0 && static_cast<size_t>(s) < plan.servers.size(); };
	for (size_t ai = 0; ai < plan.addresses.size(); ai++) {
		const auto &a = plan.addresses[ai];
		fwd_address value{};
		value.port_lo = a.portRange.lo;
		value.slice_size = static_cast<uint16_t>(std::min<uint32_t>(a.sliceSize, 0xffff));
		value.slice_count = static_cast<uint16_t>(std::min<uint32_t>(a.sliceCount, 0xffff));
		if (a.local) {
			value.flags = FWD_ADDR_LOCAL;
		} else {
			auto dc = std::find_if(plan.datacenters.begin(), plan.datacenters.end(),
					       [&](const plan::PlannedDatacenter &d) { return d.name == a.datacenter; });
			if (dc != plan.datacenters.end() && dc->gateway) {
				value.flags = FWD_ADDR_GATEWAY;
				value.gateway = dc->gateway->networkOrder();
				auto it = neighbours.find(dc->gateway->value);
				if (it != neighbours.end()) {
					value.flags |= FWD_ADDR_GATEWAY_MAC;
					copyMac(value.gateway_mac, it->second);
				} else {
					t.unresolved.push_back("gateway of " + dc->name + " (" + dc->gateway->str() + ")");
				}
			}
		}
		t.addresses.push_back({a.address.networkOrder(), value});
		if (!a.local)
			continue;
		for (uint32_t i = 0; i < a.sliceCount; i++) {
			int32_t owner = i < a.owner.size() ? a.owner[i] : plan::kNoServer;
			int32_t previous = i < a.previous.size() ? a.previous[i] : plan::kNoServer;
			if (!valid(owner) && !valid(previous))
				continue; // no entry: the program passes the packet as unowned
			fwd_slice s{};
			if (valid(owner)) {
				s.owner_addr = plan.servers[owner].address.networkOrder();
				if (static_cast<uint32_t>(owner) == plan.serverIndex)
					s.flags |= FWD_SLICE_OWNER_SELF;
				if (macs[owner]) {
					s.flags |= FWD_SLICE_OWNER_MAC;
					copyMac(s.owner_mac, *macs[owner]);
				}
			} else {
				s.flags |= FWD_SLICE_UNOWNED;
			}
			if (valid(previous) && previous != owner) {
				s.flags |= FWD_SLICE_PREVIOUS;
				s.previous_addr = plan.servers[previous].address.networkOrder();
				if (static_cast<uint32_t>(previous) == plan.serverIndex)
					s.flags |= FWD_SLICE_PREVIOUS_SELF;
				if (macs[previous]) {
					s.flags |= FWD_SLICE_PREVIOUS_MAC;
					copyMac(s.previous_mac, *macs[previous]);
				}
			}
			if (s.flags & FWD_SLICE_OWNER_SELF)
				fillZones(s, runs[ai], a.slice(i));
			t.slices.push_back({fwd_slice_key{a.address.networkOrder(), i}, s});
		}
	}
	return t;
}

Status syncMaps(const MapFds &maps, const ForwarderTables &tables)
{
	uint32_t zero = 0;
	// Additions and changes first, deletions last: a moved slice is never
	// briefly absent. The config entry goes first so new entries see this
	// server's address.
	if (bpf_map_update_elem(maps.config, &zero, &tables.config, BPF_ANY) != 0)
		return errnoError(errno, "updating map fwd_config");
	if (auto s = syncHash(maps.peers, tables.peers, "fwd_peers"); !s)
		return s;
	if (auto s = syncHash(maps.slices, tables.slices, "fwd_slices"); !s)
		return s;
	if (auto s = syncHash(maps.addrs, tables.addresses, "fwd_addrs"); !s)
		return s;
	return {};
}

Result<ForwarderCounters> readCounters(int countersFd)
{
	int cpus = libbpf_num_possible_cpus();
	if (cpus <= 0)
		return errnoError(cpus, "counting possible CPUs");
	std::vector<fwd_counter> values(static_cast<size_t>(cpus));
	ForwarderCounters c;
	for (uint32_t v = 0; v < kVerdictCount; v++) {
		if (bpf_map_lookup_elem(countersFd, &v, values.data()) != 0)
			return errnoError(errno, "reading map fwd_counters");
		for (const auto &x : values) {
			c.packets[v] += x.packets;
			c.bytes[v] += x.bytes;
		}
	}
	return c;
}

Result<ForwarderObject> ForwarderObject::load(const std::string &pinDir, bool withReference)
{
	forwarder_bpf *skel = forwarder_bpf__open();
	if (!skel)
		return errnoError(errno, "opening the BPF object");
	ForwarderObject obj(skel);
	if (!withReference)
		bpf_program__set_autoload(skel->progs.portslice_pass, false);
	if (!pinDir.empty()) {
		bpf_map *maps[] = {skel->maps.FWD_MAP_CONFIG, skel->maps.FWD_MAP_ADDRS, skel->maps.FWD_MAP_SLICES,
				   skel->maps.FWD_MAP_PEERS, skel->maps.FWD_MAP_COUNTERS};
		for (auto *m : maps) {
			int err = bpf_map__set_pin_path(m, pinPath(pinDir, bpf_map__name(m)).c_str());
			if (err)
				return errnoError(err, std::string("setting the pin path of ") + bpf_map__name(m));
		}
	}
	int err = forwarder_bpf__load(skel);
	if (err)
		return errnoError(err, "loading the BPF program (verifier log above, or run as root)");
	return obj;
}

ForwarderObject::ForwarderObject(ForwarderObject &&other) noexcept : skel_(std::exchange(other.skel_, nullptr)) {}

ForwarderObject &ForwarderObject::operator=(ForwarderObject &&other) noexcept
{
	if (this != &other) {
		if (skel_)
			forwarder_bpf__destroy(skel_);
		skel_ = std::exchange(other.skel_, nullptr);
	}
	return *this;
}

ForwarderObject::~ForwarderObject()
{
	if (skel_)
		forwarder_bpf__destroy(skel_);
}

int ForwarderObject::programFd() const
{
	return bpf_program__fd(skel_->progs.portslice_fwd);
}

int ForwarderObject::referenceProgramFd() const
{
	return bpf_program__fd(skel_->progs.portslice_pass);
}

MapFds ForwarderObject::maps() const
{
	return MapFds{bpf_map__fd(skel_->maps.FWD_MAP_CONFIG), bpf_map__fd(skel_->maps.FWD_MAP_ADDRS),
		      bpf_map__fd(skel_->maps.FWD_MAP_SLICES), bpf_map__fd(skel_->maps.FWD_MAP_PEERS),
		      bpf_map__fd(skel_->maps.FWD_MAP_COUNTERS)};
}

uint64_t ForwarderObject::objectHash()
{
	size_t size = 0;
	const auto *bytes = static_cast<const uint8_t *>(forwarder_bpf__elf_bytes(&size));
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < size; i++) {
		h ^= bytes[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

namespace {


// The interface a pinned XDP link is attached to, or 0 when it is defunct.
Result<uint32_t> linkIfindex(int linkFd)
{
	bpf_link_info info{};
	uint32_t size = sizeof(info);
	if (bpf_obj_get_info_by_fd(linkFd, &info, &size) != 0)
		return errnoError(errno, "reading the pinned link");
	if (info.type != BPF_LINK_TYPE_XDP)
		return Error(EINVAL, "the pinned link is not an XDP link");
	return info.xdp.ifindex;
}

Status unpinAll(const std::string &pinDir)
{
	std::vector<std::string> paths;
	for (const char *name : kMapNames)
		paths.push_back(pinPath(pinDir, name));
	paths.push_back(pinPath(pinDir, FWD_PIN_LINK));
	for (const auto &p : paths) {
		std::error_code ec;
		std::filesystem::remove(p, ec);
		if (ec)
			return Error(ec, "unpinning " + p);
	}
	// The directory goes if it is empty and ours; a bpffs mount point or a
	// directory holding other pins stays.
	std::error_code ignored;
	std::filesystem::remove(pinDir, ignored);
	return {};
}

} // namespace

Status applyForwarder(const plan::Plan &plan, const std::string &pinDir)
{
	auto fail = [&](const Error &e) -> Status { return e.wrap("applying XDP forwarder on " + plan.uplink); };
	uint32_t ifindex = ::if_nametoindex(plan.uplink.c_str());
	if (ifindex == 0)
		return fail(errnoError(errno, "interface " + plan.uplink));
	auto mac = interfaceMac(plan.uplink);
	if (!mac)
		return fail(mac.error());
	auto neighbours = readNeighbours(ifindex);
	if (!neighbours)
		return fail(neighbours.error());
	ForwarderTables tables = buildTables(plan, *mac, ifindex, *neighbours);

	std::error_code ec;
	std::filesystem::create_directories(pinDir, ec);
	if (ec)
		return fail(Error(ec, "creating " + pinDir + " (is bpffs mounted?)"));

	// Fast path: our own program is already attached here; only the maps change.
	UniqueFd linkFd(bpf_obj_get(pinPath(pinDir, FWD_PIN_LINK).c_str()));
	std::optional<uint32_t> linkedIf;
	if (linkFd.isValid()) {
		auto li = linkIfindex(linkFd.get());
		if (li)
			linkedIf = *li;
	}
	if (linkedIf && *linkedIf == ifindex) {
		auto fds = openPinnedMaps(pinDir);
		if (fds) {
			fwd_config current{};
			uint32_t zero = 0;
			if (bpf_map_lookup_elem((*fds)[0].get(), &zero, &current) == 0 &&
			    current.object_hash == ForwarderObject::objectHash()) {
				if (auto s = syncMaps(borrow(*fds), tables); !s)
					return fail(s.error());
				return {};
			}
		}
	}

	// Load this build's program, reusing the pinned maps when they fit;
	// maps of an older layout are replaced.
	auto obj = ForwarderObject::load(pinDir);
	if (!obj) {
		for (const char *name : kMapNames)
			std::filesystem::remove(pinPath(pinDir, name), ec);
		obj = ForwarderObject::load(pinDir);
		if (!obj)
			return fail(obj.error());
	}
	if (auto s = syncMaps(obj->maps(), tables); !s)
		return fail(s.error());

	if (linkedIf && *linkedIf == ifindex) {
		// Atomic program replacement: the interface never runs without one.
		if (bpf_link_update(linkFd.get(), obj->programFd(), nullptr) != 0)
			return fail(errnoError(errno, "replacing the program of the pinned link"));
		return {};
	}
	if (linkFd.isValid()) {
		// Attached elsewhere (the uplink was renamed or changed): move it.
		bpf_link_detach(linkFd.get());
		std::filesystem::remove(pinPath(pinDir, FWD_PIN_LINK), ec);
	}
	bpf_link_create_opts opts{};
	opts.sz = sizeof(opts);
	UniqueFd newLink(bpf_link_create(obj->programFd(), static_cast<int>(ifindex), BPF_XDP, &opts));
	if (!newLink.isValid())
		return fail(errnoError(errno, "attaching to " + plan.uplink +
						      " (EBUSY: another XDP program is attached without a link)"));
	if (bpf_obj_pin(newLink.get(), pinPath(pinDir, FWD_PIN_LINK).c_str()) != 0) {
		int err = errno;
		bpf_link_detach(newLink.get());
		return fail(errnoError(err, "pinning the link in " + pinDir));
	}
	return {};
}

Status removeForwarder(const std::string &uplink, const std::string &pinDir)
{
	UniqueFd linkFd(bpf_obj_get(pinPath(pinDir, FWD_PIN_LINK).c_str()));
	if (linkFd.isValid()) {
		auto li = linkIfindex(linkFd.get());
		if (li && *li != 0 && !uplink.empty()) {
			uint32_t want = ::if_nametoindex(uplink.c_str());
			if (want != 0 && want != *li) {
				char name[IF_NAMESIZE] = {};
				::if_indextoname(*li, name);
				return Error(EINVAL, "removing XDP forwarder: the pinned link is on " +
							     std::string(name) + ", not " + uplink);
			}
		}
		if (bpf_link_detach(linkFd.get()) != 0 && errno != ENOLINK && errno != EINVAL)
			return errnoError(errno, "removing XDP forwarder: detaching");
	}
	if (auto s = unpinAll(pinDir); !s)
		return s.error().wrap("removing XDP forwarder");
	return {};
}

Result<ForwarderCounters> readForwarderCounters(const std::string &pinDir)
{
	auto p = Pinned::open(pinPath(pinDir, FWD_NAME(FWD_MAP_COUNTERS)));
	if (!p)
		return p.error().wrap("reading XDP counters");
	return readCounters(p->fd.get());
}

} // namespace portslice::xdp
