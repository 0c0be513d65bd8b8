// SPDX-License-Identifier: MIT
// Loads the XDP forwarder, keeps it attached through a pinned bpf_link, and syncs its maps from a Plan.
#include "xdp/forwarder.h"

#include "common/hash.h"
#include "common/netlink.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <unordered_map>

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
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

// In the order of MapFds.
constexpr const char *kMapNames[] = {FWD_NAME(FWD_MAP_CONFIG), FWD_NAME(FWD_MAP_ADDR_INDEX), FWD_NAME(FWD_MAP_ADDRS),
				     FWD_NAME(FWD_MAP_SLICES),  FWD_NAME(FWD_MAP_TARGETS),   FWD_NAME(FWD_MAP_ZONES),
				     FWD_NAME(FWD_MAP_PEERS),   FWD_NAME(FWD_MAP_COUNTERS), FWD_NAME(FWD_MAP_FLOWS)};
constexpr size_t kMapCount = std::size(kMapNames);

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

// The zone runs of some addresses, by the address's index in the plan.
class ZoneRuns {
public:
	std::vector<ZoneRun> &at(uint32_t address) { return runs_[address]; }
	const std::vector<ZoneRun> &of(uint32_t address) const
	{
		static const std::vector<ZoneRun> kNone;
		auto it = runs_.find(address);
		return it == runs_.end() ? kNone : it->second;
	}
	void sort()
	{
		for (auto &[address, r] : runs_)
			std::sort(r.begin(), r.end(), [](const ZoneRun &x, const ZoneRun &y) { return x.ports.lo < y.ports.lo; });
	}

private:
	std::unordered_map<uint32_t, std::vector<ZoneRun>> runs_;
};

// `only`: the addresses whose runs are wanted (nullptr: all of them).
ZoneRuns zoneRuns(const plan::Plan &plan, const std::vector<uint32_t> *only = nullptr)
{
	ZoneRuns runs;
	auto add = [&](const plan::PlannedSource &source, uint32_t address) {
		uint16_t zone = source.mode == config::NatMode::Stateless ? uint16_t{FWD_ZONE_STATELESS}
									  : source.zone;
		for (const auto &a : source.assignments)
			if (a.address < plan.addresses.size() && (address == UINT32_MAX || a.address == address))
				runs.at(a.address).push_back({a.ports, zone});
	};
	if (only) {
		// Only the sources that may use these addresses.
		for (uint32_t ai : *only)
			plan.forWanters(ai, [&](uint32_t si) { add(plan.sources[si], ai); });
	} else {
		for (const auto &source : plan.sources)
			add(source, UINT32_MAX);
	}
	runs.sort();
	return runs;
}

std::optional<fwd_zones> zonesOf(const std::vector<ZoneRun> &runs, PortRange slice)
{
	fwd_zones value{};
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
	if (n == 0)
		return std::nullopt;
	return value;
}

fwd_target targetOf(Ipv4 address, const std::optional<Mac> &mac)
{
	fwd_target t{};
	t.addr = address.networkOrder();
	if (mac) {
		t.flags = FWD_TARGET_MAC;
		copyMac(t.mac, *mac);
	}
	return t;
}

template<class T>
bool sameBytes(const T &a, const T &b)
{
	return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template<class T>
bool sameBytes(const std::optional<T> &a, const std::optional<T> &b)
{
	return a.has_value() == b.has_value() && (!a || sameBytes(*a, *b));
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

using PinnedMaps = std::array<UniqueFd, kMapCount>;

Result<PinnedMaps> openPinnedMaps(const std::string &pinDir)
{
	PinnedMaps fds;
	for (size_t i = 0; i < fds.size(); i++) {
		auto p = Pinned::open(pinPath(pinDir, kMapNames[i]));
		if (!p)
			return p.error();
		fds[i] = std::move(p->fd);
	}
	return fds;
}

MapFds borrow(const PinnedMaps &fds)
{
	return MapFds{fds[0].get(), fds[1].get(), fds[2].get(), fds[3].get(), fds[4].get(),
		      fds[5].get(), fds[6].get(), fds[7].get(), fds[8].get()};
}

Result<bpf_map_info> mapInfo(int fd, const std::string &name)
{
	bpf_map_info info{};
	uint32_t size = sizeof(info);
	if (bpf_obj_get_info_by_fd(fd, &info, &size) != 0)
		return errnoError(errno, "reading map " + name);
	return info;
}

// An mmapped BPF array (BPF_F_MMAPABLE): reads and single-word writes without
// a syscall per element.
class MappedArray {
public:
	static Result<MappedArray> map(int fd, const char *name)
	{
		auto info = mapInfo(fd, name);
		if (!info)
			return info.error();
		size_t bytes = static_cast<size_t>(info->max_entries) * ((info->value_size + 7) & ~7u);
		long page = ::sysconf(_SC_PAGESIZE);
		bytes = (bytes + static_cast<size_t>(page) - 1) / static_cast<size_t>(page) * static_cast<size_t>(page);
		void *p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (p == MAP_FAILED)
			return errnoError(errno, std::string("mapping map ") + name);
		return MappedArray(p, bytes, info->max_entries);
	}
	MappedArray(MappedArray &&o) noexcept
		: base_(std::exchange(o.base_, nullptr)), bytes_(o.bytes_), entries_(o.entries_) {}
	MappedArray(const MappedArray &) = delete;
	MappedArray &operator=(const MappedArray &) = delete;
	MappedArray &operator=(MappedArray &&) = delete;
	~MappedArray()
	{
		if (base_)
			::munmap(base_, bytes_);
	}
	template<class T>
	T *as() const { return static_cast<T *>(base_); }
	uint32_t entries() const { return entries_; }

private:
	MappedArray(void *base, size_t bytes, uint32_t entries) : base_(base), bytes_(bytes), entries_(entries) {}
	void *base_;
	size_t bytes_;
	uint32_t entries_;
};

// An mmapable array map seen through a window of at most 256 KiB that moves
// to the element asked for: a full sync walks the 6 MiB address index and
// writes the 8 MiB slice array without ever having them resident in this
// process at once. A pointer is good until the next at().
template<class T>
class ArrayWindow {
	static_assert(sizeof(T) % 8 == 0); // the mmap stride is the value size
public:
	static Result<ArrayWindow> open(int fd, const char *name)
	{
		auto info = mapInfo(fd, name);
		if (!info)
			return info.error();
		if (info->value_size != sizeof(T))
			return Error(EINVAL, std::string("map ") + name + " has values of " +
						     std::to_string(info->value_size) + " bytes");
		return ArrayWindow(fd, name, info->max_entries);
	}
	ArrayWindow(ArrayWindow &&o) noexcept
		: fd_(o.fd_), name_(o.name_), entries_(o.entries_), base_(std::exchange(o.base_, nullptr)),
		  from_(o.from_), to_(o.to_) {}
	ArrayWindow(const ArrayWindow &) = delete;
	ArrayWindow &operator=(const ArrayWindow &) = delete;
	ArrayWindow &operator=(ArrayWindow &&) = delete;
	~ArrayWindow() { unmap(); }

	uint32_t entries() const { return entries_; }
	// Element i (< entries()).
	Result<T *> at(uint32_t i)
	{
		const size_t begin = size_t{i} * sizeof(T), end = begin + sizeof(T);
		if (!base_ || begin < from_ || end > to_) {
			unmap();
			const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
			const size_t total = (size_t{entries_} * sizeof(T) + page - 1) / page * page;
			from_ = begin / page * page;
			to_ = std::min(total, std::max(from_ + kWindowBytes, (end + page - 1) / page * page));
			void *p = ::mmap(nullptr, to_ - from_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_,
					 static_cast<off_t>(from_));
			if (p == MAP_FAILED)
				return errnoError(errno, std::string("mapping map ") + name_);
			base_ = p;
		}
		return reinterpret_cast<T *>(static_cast<char *>(base_) + (begin - from_));
	}

private:
	static constexpr size_t kWindowBytes = 256u << 10;
	ArrayWindow(int fd, const char *name, uint32_t entries) : fd_(fd), name_(name), entries_(entries) {}
	void unmap()
	{
		if (base_)
			::munmap(base_, to_ - from_);
		base_ = nullptr;
	}
	int fd_;
	const char *name_;
	uint32_t entries_;
	void *base_ = nullptr;
	size_t from_ = 0, to_ = 0;
};

// The pinned maps the last move opened, kept open for the next (a move then
// opens, maps and closes nothing but the page of its slice's word), with
// fwd_targets mapped (64 KiB). Dropped whenever this process changes the
// pins (applyForwarder, removeForwarder); before each use the pin of
// fwd_config must still be the map held (same bpffs inode), so that maps
// pinned anew by another process are never written through old descriptors.
struct KeptMaps {
	std::string pinDir;
	UniqueFd dir; // the pin directory (O_PATH): the check is a one-name lookup
	PinnedMaps fds;
	ino_t configInode = 0;
	MappedArray targets;
};
std::optional<KeptMaps> gKeptMaps;

KeptMaps *keptMaps(const std::string &pinDir)
{
	if (gKeptMaps && gKeptMaps->pinDir != pinDir)
		gKeptMaps.reset();
	struct stat pin {};
	bool found = gKeptMaps ? ::fstatat(gKeptMaps->dir.get(), kMapNames[0], &pin, 0) == 0
			       : ::stat(pinPath(pinDir, kMapNames[0]).c_str(), &pin) == 0;
	if (!found) {
		gKeptMaps.reset();
		return nullptr;
	}
	if (gKeptMaps && gKeptMaps->configInode == pin.st_ino)
		return &*gKeptMaps;
	gKeptMaps.reset();
	UniqueFd dir(::open(pinDir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
	auto fds = openPinnedMaps(pinDir);
	if (!dir.isValid() || !fds)
		return nullptr;
	auto targets = MappedArray::map(borrow(*fds).targets, "fwd_targets");
	if (!targets)
		return nullptr;
	gKeptMaps.emplace(KeptMaps{pinDir, std::move(dir), std::move(*fds), pin.st_ino, std::move(*targets)});
	return &*gKeptMaps;
}

uint64_t packSlice(const fwd_slice &s)
{
	uint64_t w;
	std::memcpy(&w, &s, sizeof(w));
	return w;
}

fwd_slice unpackSlice(uint64_t w)
{
	fwd_slice s;
	std::memcpy(&s, &w, sizeof(s));
	return s;
}

// Slots of an array whose content must not change while referenced: equal
// content shares a slot, new content goes to a slot nobody references.
template<class T>
class SlotTable {
	static_assert(sizeof(T) % 8 == 0);
	using Key = std::array<uint64_t, sizeof(T) / 8>; // the content itself: no allocation per lookup
	struct KeyHash {
		size_t operator()(const Key &k) const
		{
			uint64_t h = 0x9E3779B97F4A7C15ull;
			for (uint64_t w : k)
				h = (h ^ w) * 0x100000001b3ull;
			return static_cast<size_t>(h ^ (h >> 29));
		}
	};
	static Key keyOf(const T &v)
	{
		Key k;
		std::memcpy(k.data(), &v, sizeof(T));
		return k;
	}

public:
	SlotTable(T *slots, uint32_t count, const std::vector<bool> &referenced) : slots_(slots)
	{
		for (uint32_t i = 1; i < count; i++) {
			if (referenced[i])
				byContent_.emplace(keyOf(slots_[i]), static_cast<uint16_t>(i));
			else
				free_.push_back(i);
		}
		std::reverse(free_.begin(), free_.end()); // hand out low slots first
	}

	Result<uint16_t> slotFor(const T &want, const char *name)
	{
		Key key = keyOf(want);
		if (auto it = byContent_.find(key); it != byContent_.end())
			return it->second;
		if (free_.empty())
			return Error(ENOSPC, std::string("map ") + name + " is full");
		uint32_t i = free_.back();
		free_.pop_back();
		if (!sameBytes(slots_[i], want))
			std::memcpy(&slots_[i], &want, sizeof(T)); // unreferenced: the program cannot reach it
		byContent_.emplace(key, static_cast<uint16_t>(i));
		return static_cast<uint16_t>(i);
	}

private:
	T *slots_;
	std::unordered_map<Key, uint16_t, KeyHash> byContent_;
	std::vector<uint32_t> free_;
};

} // namespace

std::string_view verdictName(uint32_t verdict)
{
	return verdict < kVerdictCount ? kVerdictNames[verdict] : "unknown";
}

Result<NeighbourTable> readNeighbours(uint32_t ifindex)
{
	auto sock = NetlinkSocket::open(NETLINK_ROUTE, "rtnetlink");
	if (!sock)
		return sock.error().wrap("reading neighbours");
	std::vector<char> buf;
	nlmsghdr *nlh = netlinkMessage(buf, RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP);
	auto *req = static_cast<ndmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(ndmsg)));
	req->ndm_family = AF_INET;

	NeighbourTable table;
	Status s = sock->request(nlh, [&](const nlmsghdr *m) {
		if (m->nlmsg_type != RTM_NEWNEIGH)
			return MNL_CB_OK;
		const auto *nd = static_cast<const ndmsg *>(mnl_nlmsg_get_payload(m));
		if (nd->ndm_family != AF_INET || static_cast<uint32_t>(nd->ndm_ifindex) != ifindex ||
		    (nd->ndm_state & (NUD_INCOMPLETE | NUD_FAILED | NUD_NOARP)))
			return MNL_CB_OK;
		struct Found {
			std::optional<uint32_t> ip;
			std::optional<Mac> mac;
		} found;
		mnl_attr_parse(m, sizeof(ndmsg),
			       [](const nlattr *attr, void *data) -> int {
				       auto *f = static_cast<Found *>(data);
				       if (mnl_attr_get_type(attr) == NDA_DST && mnl_attr_get_payload_len(attr) == 4) {
					       uint32_t be;
					       std::memcpy(&be, mnl_attr_get_payload(attr), 4);
					       f->ip = ntohl(be);
				       } else if (mnl_attr_get_type(attr) == NDA_LLADDR &&
						  mnl_attr_get_payload_len(attr) == 6) {
					       Mac mc;
					       std::memcpy(mc.bytes.data(), mnl_attr_get_payload(attr), 6);
					       f->mac = mc;
				       }
				       return MNL_CB_OK;
			       },
			       &found);
		auto &[ip, mac] = found;
		if (ip && mac)
			table[*ip] = *mac;
		return MNL_CB_OK;
	});
	if (!s)
		return s.error().wrap("reading neighbours");
	return table;
}

bool SliceWant::operator==(const SliceWant &o) const
{
	return flags == o.flags && sameBytes(owner, o.owner) && sameBytes(previous, o.previous) &&
	       sameBytes(zones, o.zones);
}

size_t ForwarderTables::sliceCount() const
{
	size_t n = 0;
	for (const auto &a : addresses)
		n += a.slices.size();
	return n;
}

SliceWant ForwarderTables::slice(size_t address, uint32_t i) const
{
	const SliceCell &c = addresses[address].slices[i];
	SliceWant s;
	s.flags = c.flags;
	if (c.owner)
		s.owner = targets[c.owner - 1u];
	if (c.previous)
		s.previous = targets[c.previous - 1u];
	if (c.zones)
		s.zones = zoneSets[c.zones - 1u];
	return s;
}

namespace {

// Slice i of address ai as the program must see it: its servers as indices
// into the plan's, a zone set into `zoneSets`.
SliceCell sliceCellOf(const plan::Plan &plan, const ZoneRuns &runs, size_t ai, uint32_t i,
		      std::vector<fwd_zones> &zoneSets)
{
	const auto &a = plan.addresses[ai];
	auto valid = [&](int32_t s) { return s >= 0 && static_cast<size_t>(s) < plan.servers.size(); };
	int32_t owner = i < a.owner.size() ? a.owner[i] : plan::kNoServer;
	int32_t previous = i < a.previous.size() ? a.previous[i] : plan::kNoServer;
	SliceCell s;
	if (!valid(owner))
		return s; // a zero word: the program passes the packet as unowned
	s.flags = FWD_SLICE_OWNED;
	s.owner = static_cast<uint16_t>(owner + 1);
	if (static_cast<uint32_t>(owner) == plan.serverIndex)
		s.flags |= FWD_SLICE_OWNER_SELF;
	if (valid(previous) && previous != owner) {
		s.flags |= FWD_SLICE_PREVIOUS;
		s.previous = static_cast<uint16_t>(previous + 1);
		if (static_cast<uint32_t>(previous) == plan.serverIndex)
			s.flags |= FWD_SLICE_PREVIOUS_SELF;
	}
	if ((s.flags & FWD_SLICE_OWNER_SELF) && (s.flags & FWD_SLICE_PREVIOUS)) {
		if (auto zones = zonesOf(runs.of(static_cast<uint32_t>(ai)), a.slice(i))) {
			zoneSets.push_back(*zones);
			s.zones = static_cast<uint32_t>(zoneSets.size());
		}
	}
	return s;
}

std::vector<fwd_target> serverTargets(const plan::Plan &plan, const NeighbourTable &neighbours)
{
	std::vector<fwd_target> targets;
	for (const auto &server : plan.servers)
		targets.push_back(targetOf(server.address, macOf(server, neighbours)));
	return targets;
}

// Zone runs (a walk over the ports of the sources that may use an address)
// only for the addresses of `slices` (nullptr: all) where this server owns
// a slice that a previous owner still drains.
ZoneRuns drainRuns(const plan::Plan &plan, const std::vector<SliceRef> *slices)
{
	std::vector<uint32_t> wanted;
	auto want = [&](uint32_t ai, uint32_t i) {
		const auto &a = plan.addresses[ai];
		if (i < a.owner.size() && i < a.previous.size() &&
		    a.owner[i] == static_cast<int32_t>(plan.serverIndex) && a.previous[i] != plan::kNoServer)
			wanted.push_back(ai);
	};
	if (slices) {
		for (const auto &ref : *slices)
			if (ref.address < plan.addresses.size())
				want(ref.address, ref.slice);
	} else {
		for (uint32_t ai = 0; ai < plan.addresses.size(); ai++)
			for (uint32_t i = 0; i < plan.addresses[ai].sliceCount; i++)
				want(ai, i);
	}
	std::sort(wanted.begin(), wanted.end());
	wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
	return zoneRuns(plan, &wanted);
}

} // namespace

std::vector<SliceUpdate> buildSlices(const plan::Plan &plan, const std::vector<SliceRef> &slices,
				     const NeighbourTable &neighbours)
{
	ForwarderTables one; // the expansion of each slice's cell
	one.targets = serverTargets(plan, neighbours);
	one.addresses.resize(1);
	one.addresses[0].slices.resize(1);
	auto runs = drainRuns(plan, &slices);
	std::vector<SliceUpdate> updates;
	for (const auto &ref : slices) {
		if (ref.address >= plan.addresses.size() || ref.slice >= plan.addresses[ref.address].sliceCount)
			continue;
		one.zoneSets.clear();
		one.addresses[0].slices[0] = sliceCellOf(plan, runs, ref.address, ref.slice, one.zoneSets);
		updates.push_back({plan.addresses[ref.address].address.networkOrder(), ref.slice, one.slice(0, 0)});
	}
	return updates;
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

	t.targets = serverTargets(plan, neighbours);
	const std::vector<fwd_target> &targets = t.targets;
	for (size_t i = 0; i < plan.servers.size(); i++) {
		const auto &server = plan.servers[i];
		if (i == plan.serverIndex)
			continue;
		t.peers.push_back({server.address.networkOrder(), fwd_peer{static_cast<uint32_t>(i)}});
		if (!(targets[i].flags & FWD_TARGET_MAC))
			t.unresolved.push_back("server " + server.name + " (" + server.address.str() + ")");
	}

	auto runs = drainRuns(plan, nullptr);
	for (size_t ai = 0; ai < plan.addresses.size(); ai++) {
		const auto &a = plan.addresses[ai];
		AddressWant want;
		want.addr = a.address.networkOrder();
		want.value.addr = want.addr;
		want.value.port_lo = a.portRange.lo;
		want.value.slice_size = static_cast<uint16_t>(std::min<uint32_t>(a.sliceSize, 0xffff));
		want.value.slice_count = static_cast<uint16_t>(std::min<uint32_t>(a.sliceCount, 0xffff));
		want.value.slice_shift = 0xffff;
		if (std::has_single_bit(uint32_t{want.value.slice_size}))
			want.value.slice_shift = static_cast<uint16_t>(std::countr_zero(uint32_t{want.value.slice_size}));
		if (a.local) {
			want.value.flags = FWD_ADDR_LOCAL;
		} else {
			auto dc = std::find_if(plan.datacenters.begin(), plan.datacenters.end(),
					       [&](const plan::PlannedDatacenter &d) { return d.name == a.datacenter; });
			if (dc != plan.datacenters.end() && dc->gateway) {
				want.value.flags = FWD_ADDR_GATEWAY;
				auto it = neighbours.find(dc->gateway->value);
				std::optional<Mac> mac;
				if (it != neighbours.end())
					mac = it->second;
				else
					t.unresolved.push_back("gateway of " + dc->name + " (" + dc->gateway->str() + ")");
				want.gateway = targetOf(*dc->gateway, mac);
			}
		}
		if (a.local) {
			want.slices.resize(want.value.slice_count);
			for (uint32_t i = 0; i < want.value.slice_count; i++)
				want.slices[i] = sliceCellOf(plan, runs, ai, i, t.zoneSets);
		}
		t.addresses.push_back(std::move(want));
	}
	return t;
}

Status syncMaps(const MapFds &maps, const ForwarderTables &tables)
{
	uint32_t zero = 0;
	if (bpf_map_update_elem(maps.config, &zero, &tables.config, BPF_ANY) != 0)
		return errnoError(errno, "updating map fwd_config");
	if (auto s = syncHash(maps.peers, tables.peers, "fwd_peers"); !s)
		return s;

	auto index = ArrayWindow<fwd_address>::open(maps.addrIndex, "fwd_addr_index");
	if (!index)
		return index.error();
	auto slices = ArrayWindow<uint64_t>::open(maps.slices, "fwd_slices");
	if (!slices)
		return slices.error();
	auto targets = MappedArray::map(maps.targets, "fwd_targets");
	auto zones = MappedArray::map(maps.zones, "fwd_zones");
	for (const auto *m : {&targets, &zones})
		if (!*m)
			return m->error();

	// What the program can reach now: the addresses of the index and of the
	// hash, their runs of slices, and the slots those name.
	std::unordered_map<uint32_t, fwd_address> current;
	current.reserve(tables.addresses.size() * 2);
	for (uint32_t b = 0; b < index->entries(); b++) {
		auto entry = index->at(b);
		if (!entry)
			return entry.error();
		if ((*entry)->addr != 0)
			current[(*entry)->addr] = **entry;
	}
	{
		uint32_t key = 0;
		uint32_t next = 0;
		const void *prev = nullptr;
		fwd_address value{};
		while (bpf_map_get_next_key(maps.addrs, prev, &next) == 0) {
			if (bpf_map_lookup_elem(maps.addrs, &next, &value) == 0)
				current[next] = value;
			key = next;
			prev = &key;
		}
	}
	std::vector<bool> targetRefs(targets->entries()), zoneRefs(zones->entries());
	std::vector<std::pair<uint32_t, uint32_t>> busy; // [base, base + count) in use
	for (const auto &[addr, a] : current) {
		if (a.flags & FWD_ADDR_GATEWAY && a.gateway < targetRefs.size())
			targetRefs[a.gateway] = true;
		if (!(a.flags & FWD_ADDR_LOCAL) || uint64_t{a.slice_base} + a.slice_count > slices->entries())
			continue;
		busy.push_back({a.slice_base, a.slice_base + a.slice_count});
	}
	// The runs' words in the order they lie in the map (the window moves forward).
	std::sort(busy.begin(), busy.end());
	for (const auto &[lo, hi] : busy)
		for (uint32_t i = lo; i < hi; i++) {
			auto word = slices->at(i);
			if (!word)
				return word.error();
			fwd_slice s = unpackSlice(**word);
			for (uint16_t slot : {s.owner, s.previous})
				if (slot < targetRefs.size())
					targetRefs[slot] = true;
			if (s.zones < zoneRefs.size())
				zoneRefs[s.zones] = true;
		}
	SlotTable<fwd_target> targetSlots(targets->as<fwd_target>(), targets->entries(), targetRefs);
	SlotTable<fwd_zones> zoneSlots(zones->as<fwd_zones>(), zones->entries(), zoneRefs);

	// Runs of slices: an address keeps its run while its slice count stays;
	// otherwise it gets a free run, never one the program can still reach.
	// Bump allocation past every run in use; when the end is reached, the
	// first gap big enough (busy is sorted).
	uint32_t bump = 0;
	for (const auto &[lo, hi] : busy)
		bump = std::max(bump, hi);
	auto allocate = [&](uint32_t count) -> std::optional<uint32_t> {
		if (uint64_t{bump} + count <= slices->entries()) {
			busy.insert(std::upper_bound(busy.begin(), busy.end(), std::pair{bump, bump + count}),
				    {bump, bump + count});
			bump += count;
			return bump - count;
		}
		uint32_t at = 0;
		for (size_t i = 0; i < busy.size(); i++) {
			if (busy[i].first >= at + count)
				break;
			at = std::max(at, busy[i].second);
		}
		if (uint64_t{at} + count > slices->entries())
			return std::nullopt;
		busy.insert(std::upper_bound(busy.begin(), busy.end(), std::pair{at, at + count}), {at, at + count});
		return at;
	};

	std::vector<fwd_address> entries;
	for (size_t ai = 0; ai < tables.addresses.size(); ai++) {
		const AddressWant &want = tables.addresses[ai];
		fwd_address value = want.value;
		if (want.gateway) {
			auto slot = targetSlots.slotFor(*want.gateway, "fwd_targets");
			if (!slot)
				return slot.error();
			value.gateway = *slot;
		}
		if (value.flags & FWD_ADDR_LOCAL) {
			auto it = current.find(want.addr);
			if (it != current.end() && (it->second.flags & FWD_ADDR_LOCAL) &&
			    it->second.slice_count == value.slice_count &&
			    uint64_t{it->second.slice_base} + value.slice_count <= slices->entries()) {
				value.slice_base = it->second.slice_base;
			} else {
				auto base = allocate(value.slice_count);
				if (!base)
					return Error(ENOSPC, "map fwd_slices is full");
				value.slice_base = *base;
			}
			// Slots first, then the words that name them: one store each.
			for (uint32_t i = 0; i < value.slice_count; i++) {
				const SliceWant sw = tables.slice(ai, i);
				fwd_slice s{};
				s.flags = sw.flags;
				if (sw.owner) {
					auto slot = targetSlots.slotFor(*sw.owner, "fwd_targets");
					if (!slot)
						return slot.error();
					s.owner = *slot;
				}
				if (sw.previous) {
					auto slot = targetSlots.slotFor(*sw.previous, "fwd_targets");
					if (!slot)
						return slot.error();
					s.previous = *slot;
				}
				if (sw.zones) {
					auto slot = zoneSlots.slotFor(*sw.zones, "fwd_zones");
					if (!slot)
						return slot.error();
					s.zones = *slot;
				}
				uint64_t word = packSlice(s);
				auto cell = slices->at(value.slice_base + i);
				if (!cell)
					return cell.error();
				std::atomic_thread_fence(std::memory_order_release);
				std::atomic_ref<uint64_t> stored(**cell);
				if (stored.load(std::memory_order_relaxed) != word)
					stored.store(word, std::memory_order_release);
			}
		}
		entries.push_back(value);
	}

	// Address entries last: an address points at its run only once the run is
	// complete. Bucket collisions go to the hash as well.
	std::vector<std::pair<uint32_t, const fwd_address *>> byBucket;
	byBucket.reserve(entries.size());
	for (const auto &e : entries)
		byBucket.push_back({FWD_ADDR_BUCKET(ntohl(e.addr)), &e});
	std::stable_sort(byBucket.begin(), byBucket.end(),
			 [](const auto &x, const auto &y) { return x.first < y.first; });
	std::vector<std::pair<uint32_t, fwd_address>> overflow;
	size_t at = 0;
	for (uint32_t b = 0; b < index->entries(); b++) {
		fwd_address want{};
		size_t end = at;
		while (end < byBucket.size() && byBucket[end].first == b)
			end++;
		if (end > at) {
			want = *byBucket[at].second;
			if (end - at > 1) {
				want.flags |= FWD_ADDR_COLLISION;
				for (size_t i = at; i < end; i++)
					overflow.push_back({byBucket[i].second->addr, *byBucket[i].second});
			}
		}
		at = end;
		auto entry = index->at(b);
		if (!entry)
			return entry.error();
		if (!sameBytes(**entry, want) && bpf_map_update_elem(maps.addrIndex, &b, &want, BPF_ANY) != 0)
			return errnoError(errno, "updating map fwd_addr_index");
	}
	return syncHash(maps.addrs, overflow, "fwd_addrs");
}

// One word of fwd_slices, through a mapping of just its page: a single
// 8-byte store, so the program never reads half an old and half a new word
// (a map update syscall copies bytes).
Status storeSliceWord(int fd, uint32_t index, uint64_t word)
{
	auto info = mapInfo(fd, "fwd_slices");
	if (!info)
		return info.error();
	if (index >= info->max_entries || info->value_size != sizeof(word))
		return Error(ENOENT, "the slice is not in the maps yet");
	const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
	const size_t offset = size_t{index} * sizeof(word);
	const size_t pageStart = offset / page * page;
	void *p = ::mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(pageStart));
	if (p == MAP_FAILED)
		return errnoError(errno, "mapping map fwd_slices");
	auto *w = reinterpret_cast<uint64_t *>(static_cast<char *>(p) + (offset - pageStart));
	std::atomic_ref<uint64_t>(*w).store(word, std::memory_order_release);
	::munmap(p, page);
	return {};
}

// The slot of fwd_zones that holds `want`, or the first never used one, where
// `want` goes now. The program cannot reach that slot: a value in use has a
// run, and slots are handed out lowest first (SlotTable, and here) and never
// cleared, so the used ones are a prefix of the array and the first all-zero
// slot ends it. Read in mappings of a few pages: mapping the whole array
// (2 MB) makes the kernel install every page of it.
Result<uint16_t> zoneSlot(int fd, const fwd_zones &want)
{
	auto info = mapInfo(fd, "fwd_zones");
	if (!info)
		return info.error();
	if (info->value_size != sizeof(fwd_zones))
		return Error(ENOENT, "the zone set is not in the maps yet");
	const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
	const size_t chunk = 16 * page;
	const size_t total = size_t{info->max_entries} * sizeof(fwd_zones);
	const fwd_zones none{};
	for (size_t offset = 0; offset < total; offset += chunk) {
		size_t bytes = std::min(chunk, (total - offset + page - 1) / page * page);
		void *p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(offset));
		if (p == MAP_FAILED)
			return errnoError(errno, "mapping map fwd_zones");
		const auto *slots = static_cast<const fwd_zones *>(p);
		size_t first = offset / sizeof(fwd_zones);
		size_t count = std::min(bytes, total - offset) / sizeof(fwd_zones);
		std::optional<uint32_t> found, unused;
		for (size_t i = first == 0 ? 1 : 0; i < count && !found && !unused; i++) {
			if (sameBytes(slots[i], want))
				found = static_cast<uint32_t>(first + i);
			else if (sameBytes(slots[i], none))
				unused = static_cast<uint32_t>(first + i);
		}
		::munmap(p, bytes);
		if (found)
			return static_cast<uint16_t>(*found);
		if (unused) {
			if (bpf_map_update_elem(fd, &*unused, &want, BPF_ANY) != 0)
				return errnoError(errno, "updating map fwd_zones");
			return static_cast<uint16_t>(*unused);
		}
	}
	return Error(ENOENT, "the zone set is not in the maps yet"); // full: the whole sync makes room
}

namespace {

// syncSlices with fwd_targets mapped already.
Status syncSlicesWith(const MapFds &maps, const std::vector<SliceUpdate> &updates, const MappedArray &targets)
{
	auto find = [](const auto *slots, uint32_t count, const auto &want) -> std::optional<uint16_t> {
		for (uint32_t i = 1; i < count; i++)
			if (sameBytes(slots[i], want))
				return static_cast<uint16_t>(i);
		return std::nullopt;
	};
	auto missing = [](const std::string &what) { return Error(ENOENT, what + " is not in the maps yet"); };
	for (const auto &u : updates) {
		uint32_t bucket = FWD_ADDR_BUCKET(ntohl(u.addr));
		fwd_address a{};
		if (bpf_map_lookup_elem(maps.addrIndex, &bucket, &a) != 0)
			return errnoError(errno, "reading map fwd_addr_index");
		if (a.addr != u.addr && (!(a.flags & FWD_ADDR_COLLISION) ||
					 bpf_map_lookup_elem(maps.addrs, &u.addr, &a) != 0))
			return missing("the address");
		if (!(a.flags & FWD_ADDR_LOCAL) || u.slice >= a.slice_count)
			return missing("the slice");
		fwd_slice s{};
		s.flags = u.want.flags;
		if (u.want.owner) {
			auto slot = find(targets.as<fwd_target>(), targets.entries(), *u.want.owner);
			if (!slot)
				return missing("the owner");
			s.owner = *slot;
		}
		if (u.want.previous) {
			auto slot = find(targets.as<fwd_target>(), targets.entries(), *u.want.previous);
			if (!slot)
				return missing("the previous owner");
			s.previous = *slot;
		}
		if (u.want.zones) {
			auto slot = zoneSlot(maps.zones, *u.want.zones);
			if (!slot)
				return slot.error();
			s.zones = *slot;
		}
		if (Status st = storeSliceWord(maps.slices, a.slice_base + u.slice, packSlice(s)); !st)
			return st;
	}
	return {};
}

} // namespace

Status syncSlices(const MapFds &maps, const std::vector<SliceUpdate> &updates)
{
	// A handful of words: lookups and one-page mappings, not mappings of the
	// whole arrays (mapping one makes the kernel install all of its pages:
	// about 1 ms for fwd_slices, fwd_addr_index and fwd_zones together).
	// fwd_targets is small; fwd_zones is read a few pages at a time, only for
	// a slice in handover.
	auto targets = MappedArray::map(maps.targets, "fwd_targets");
	if (!targets)
		return targets.error();
	return syncSlicesWith(maps, updates, *targets);
}

bool kernelLookupTakesZones()
{
	auto hasZone = [](const btf *b) {
		int id = btf__find_by_name_kind(b, "bpf_ct_opts", BTF_KIND_STRUCT);
		if (id < 0)
			return std::optional<bool>{};
		const btf_type *t = btf__type_by_id(b, static_cast<uint32_t>(id));
		const btf_member *m = btf_members(t);
		for (uint16_t i = 0; i < btf_vlen(t); i++)
			if (const char *name = btf__name_by_offset(b, m[i].name_off); name && std::strcmp(name, "ct_zone_id") == 0)
				return std::optional<bool>{true};
		return std::optional<bool>{false};
	};
	btf *vmlinux = btf__load_vmlinux_btf();
	if (!vmlinux)
		return false;
	std::optional<bool> found = hasZone(vmlinux);
	if (!found) {
		if (btf *module = btf__load_module_btf("nf_conntrack", vmlinux)) {
			found = hasZone(module);
			btf__free(module);
		}
	}
	btf__free(vmlinux);
	return found.value_or(false);
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

Result<ForwarderObject> ForwarderObject::load(const std::string &pinDir, bool withReference, uint32_t sliceCapacity)
{
	forwarder_bpf *skel = forwarder_bpf__open();
	if (!skel)
		return errnoError(errno, "opening the BPF object");
	ForwarderObject obj(skel);
	if (!withReference)
		bpf_program__set_autoload(skel->progs.portslice_pass, false);
	if (sliceCapacity > FWD_SLICES_DEFAULT) {
		int err = bpf_map__set_max_entries(skel->maps.FWD_MAP_SLICES, sliceCapacity);
		if (err)
			return errnoError(err, "sizing map fwd_slices");
	}
	if (!pinDir.empty()) {
		bpf_map *maps[] = {skel->maps.FWD_MAP_CONFIG,  skel->maps.FWD_MAP_ADDR_INDEX, skel->maps.FWD_MAP_ADDRS,
				   skel->maps.FWD_MAP_SLICES,  skel->maps.FWD_MAP_TARGETS,    skel->maps.FWD_MAP_ZONES,
				   skel->maps.FWD_MAP_PEERS,   skel->maps.FWD_MAP_COUNTERS,   skel->maps.FWD_MAP_FLOWS};
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

int ForwarderObject::recordProgramFd() const
{
	return bpf_program__fd(skel_->progs.portslice_record);
}

int ForwarderObject::referenceProgramFd() const
{
	return bpf_program__fd(skel_->progs.portslice_pass);
}

MapFds ForwarderObject::maps() const
{
	return MapFds{bpf_map__fd(skel_->maps.FWD_MAP_CONFIG),  bpf_map__fd(skel_->maps.FWD_MAP_ADDR_INDEX),
		      bpf_map__fd(skel_->maps.FWD_MAP_ADDRS),   bpf_map__fd(skel_->maps.FWD_MAP_SLICES),
		      bpf_map__fd(skel_->maps.FWD_MAP_TARGETS), bpf_map__fd(skel_->maps.FWD_MAP_ZONES),
		      bpf_map__fd(skel_->maps.FWD_MAP_PEERS),   bpf_map__fd(skel_->maps.FWD_MAP_COUNTERS),
		      bpf_map__fd(skel_->maps.FWD_MAP_FLOWS)};
}

uint64_t ForwarderObject::objectHash()
{
	// Every slice move compares it: the object is built in, hash it once.
	static const uint64_t hash = [] {
		size_t size = 0;
		const auto *bytes = static_cast<const uint8_t *>(forwarder_bpf__elf_bytes(&size));
		Fnv1a64 h;
		h.add(bytes, size);
		return h.value();
	}();
	return hash;
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

// The uplink's tc egress hook (clsact; created if missing, never removed:
// other programs may use it).
bpf_tc_hook egressHook(uint32_t ifindex)
{
	bpf_tc_hook hook{};
	hook.sz = sizeof(hook);
	hook.ifindex = static_cast<int>(ifindex);
	hook.attach_point = BPF_TC_EGRESS;
	return hook;
}

bpf_tc_opts recordFilter(int progFd)
{
	bpf_tc_opts opts{};
	opts.sz = sizeof(opts);
	opts.handle = kRecordHandle;
	opts.priority = kRecordHandle;
	opts.prog_fd = progFd;
	return opts;
}

// libbpf prints the kernel's reason for a failed tc request on standard
// error ("Kernel error message: Cannot find specified filter chain"): for a
// query or a removal of a filter that is not there yet, which is no error
// here, and a line without a log priority in the daemon's log.
class QuietLibbpf {
public:
	QuietLibbpf() : before_(libbpf_set_print(nullptr)) {}
	~QuietLibbpf() { libbpf_set_print(before_); }
	QuietLibbpf(const QuietLibbpf &) = delete;
	QuietLibbpf &operator=(const QuietLibbpf &) = delete;

private:
	libbpf_print_fn_t before_;
};

// portslice_record (progFd) as the uplink's egress filter, unless it runs there already.
Status attachRecord(uint32_t ifindex, int progFd)
{
	bpf_tc_hook hook = egressHook(ifindex);
	int created;
	{
		// The hook is there after the first attach: EEXIST, which libbpf
		// prints as "Exclusivity flag on, cannot modify".
		QuietLibbpf quiet;
		created = bpf_tc_hook_create(&hook);
	}
	if (created && created != -EEXIST)
		return errnoError(created, "adding the tc egress hook (clsact) for the egress program");
	bpf_prog_info info{};
	uint32_t size = sizeof(info);
	if (bpf_obj_get_info_by_fd(progFd, &info, &size) != 0)
		return errnoError(errno, "reading the egress program");
	bpf_tc_opts query = recordFilter(0);
	int queried;
	{
		QuietLibbpf quiet;
		queried = bpf_tc_query(&hook, &query);
	}
	if (queried == 0 && query.prog_id == info.id)
		return {};
	bpf_tc_opts opts = recordFilter(progFd);
	opts.flags = BPF_TC_F_REPLACE;
	if (int err = bpf_tc_attach(&hook, &opts); err)
		return errnoError(err, "attaching the egress program to tc egress");
	return {};
}

Status detachRecord(uint32_t ifindex)
{
	bpf_tc_hook hook = egressHook(ifindex);
	bpf_tc_opts opts = recordFilter(0);
	int err;
	{
		QuietLibbpf quiet;
		err = bpf_tc_detach(&hook, &opts);
	}
	if (err && err != -ENOENT && err != -EINVAL)
		return errnoError(err, "detaching the egress program from tc egress");
	return {};
}

Status unpinAll(const std::string &pinDir)
{
	gKeptMaps.reset();
	std::vector<std::string> paths;
	for (const char *name : kMapNames)
		paths.push_back(pinPath(pinDir, name));
	paths.push_back(pinPath(pinDir, FWD_PIN_LINK));
	paths.push_back(pinPath(pinDir, FWD_PIN_RECORD));
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
	gKeptMaps.reset(); // the pins may change below
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
	// Built where they are written, not before a program load: libbpf reads
	// the kernel's BTF then (twice 5.5 MB for a moment), and the tables of a
	// large fleet (4 MB at 10,000 addresses) need not be held beside it.
	auto tables = [&] { return buildTables(plan, *mac, ifindex, *neighbours); };
	size_t slices = 0; // what tables().sliceCount() will be: every slice of a local address
	for (const plan::PlannedAddress &a : plan.addresses)
		if (a.local)
			slices += std::min<uint32_t>(a.sliceCount, 0xffff);

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
	// fwd_slices holds twice the plan's slices (an address that moves to a new
	// run needs room while the old one is still reachable), at least the
	// default, and keeps a bigger pinned size.
	uint64_t want = std::max<uint64_t>(FWD_SLICES_DEFAULT, 2 * slices);
	uint32_t capacity = FWD_SLICES_DEFAULT;
	while (capacity < want && capacity < (1u << 30))
		capacity <<= 1;
	bool grow = false;
	if (UniqueFd pinned(bpf_obj_get(pinPath(pinDir, FWD_NAME(FWD_MAP_SLICES)).c_str())); pinned.isValid()) {
		if (auto info = mapInfo(pinned.get(), "fwd_slices"); info && info->max_entries >= want)
			capacity = info->max_entries;
	}
	if (linkedIf && *linkedIf == ifindex) {
		auto fds = openPinnedMaps(pinDir);
		if (fds) {
			fwd_config current{};
			uint32_t zero = 0;
			if (bpf_map_lookup_elem((*fds)[0].get(), &zero, &current) == 0 &&
			    current.object_hash == ForwarderObject::objectHash()) {
				auto s = syncMaps(borrow(*fds), tables());
				UniqueFd record(bpf_obj_get(pinPath(pinDir, FWD_PIN_RECORD).c_str()));
				if (s && record.isValid()) {
					if (Status r = attachRecord(ifindex, record.get()); !r)
						return fail(r.error());
					return {};
				}
				if (!s && s.error().code().value() != ENOSPC)
					return fail(s.error());
				// ENOSPC: fresh, bigger maps below; the attached program keeps
				// the old ones until the swap. No pinned egress program: load it.
				grow = !s;
			}
		}
	}

	// Load this build's program, reusing the pinned maps when they fit;
	// maps of an older layout or size are replaced (the program attached now
	// keeps its maps until bpf_link_update swaps it).
	auto unpinMaps = [&] {
		for (const char *name : kMapNames)
			std::filesystem::remove(pinPath(pinDir, name), ec);
	};
	if (grow)
		unpinMaps();
	auto obj = ForwarderObject::load(pinDir, false, capacity);
	if (!obj) {
		unpinMaps();
		obj = ForwarderObject::load(pinDir, false, capacity);
		if (!obj)
			return fail(obj.error());
	}
	if (auto s = syncMaps(obj->maps(), tables()); !s)
		return fail(s.error());
	// The egress program first: the flows this server opens in a slice it
	// takes over are noted before the new forwarder checks for them.
	std::filesystem::remove(pinPath(pinDir, FWD_PIN_RECORD), ec);
	if (bpf_obj_pin(obj->recordProgramFd(), pinPath(pinDir, FWD_PIN_RECORD).c_str()) != 0)
		return fail(errnoError(errno, "pinning the egress program in " + pinDir));
	if (Status r = attachRecord(ifindex, obj->recordProgramFd()); !r)
		return fail(r.error());

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

Status applyForwarderSlices(const plan::Plan &plan, const std::vector<SliceRef> &changed, const std::string &pinDir)
{
	uint32_t ifindex = ::if_nametoindex(plan.uplink.c_str());
	KeptMaps *kept = keptMaps(pinDir);
	if (ifindex != 0 && kept) {
		const PinnedMaps *fds = &kept->fds;
		fwd_config current{};
		uint32_t zero = 0;
		// A moved slice names servers only: with every server's MAC in the
		// file there is no neighbour to look up (a netlink dump a move).
		bool macs = std::all_of(plan.servers.begin(), plan.servers.end(),
					[](const plan::PlannedServer &s) { return s.mac.has_value(); });
		auto neighbours = macs ? Result<NeighbourTable>(NeighbourTable{}) : readNeighbours(ifindex);
		if (neighbours && bpf_map_lookup_elem((*fds)[0].get(), &zero, &current) == 0 &&
		    current.object_hash == ForwarderObject::objectHash() &&
		    current.self_addr == plan.self().address.networkOrder()) {
			auto s = syncSlicesWith(borrow(*fds), buildSlices(plan, changed, *neighbours), kept->targets);
			if (s || s.error().code().value() != ENOENT)
				return s ? s : s.error().wrap("moving slices in the XDP forwarder");
		}
	}
	return applyForwarder(plan, pinDir);
}

Status preparePinDir(const std::string &pinDir)
{
	namespace fs = std::filesystem;
	fs::path dir = fs::absolute(pinDir).lexically_normal();
	if (!dir.has_filename())
		dir = dir.parent_path();
	// The nearest directory that exists: pins go on its file system.
	fs::path existing = dir;
	std::error_code ec;
	while (!fs::exists(existing, ec) && existing.has_parent_path() && existing != existing.parent_path())
		existing = existing.parent_path();
	struct statfs st{};
	if (::statfs(existing.c_str(), &st) != 0)
		return errnoError(errno, "looking at the file system of " + existing.string());
	if (st.f_type == BPF_FS_MAGIC)
		return {};
	bool standard = existing == fs::path("/sys/fs/bpf");
	if (!standard)
		return Error("the XDP pin directory " + pinDir + " is not on a bpffs (" + existing.string() +
					     " is not): mount one there (mount -t bpf bpf DIR) or give --xdp-pin-dir "
					     "a directory on a bpffs");
	// A bpffs mounted in a private mount namespace lives only as long as the
	// processes in it: the forwarder's link, pinned there, would be detached
	// when this process exits. Mount only where that cannot happen: in PID
	// 1's mount namespace. `ip netns exec` makes a private one, where even
	// reading /proc/1/ns/mnt is refused: not knowing counts as private.
	struct stat self{}, init{};
	bool initsNamespace = ::stat("/proc/self/ns/mnt", &self) == 0 && ::stat("/proc/1/ns/mnt", &init) == 0 &&
			      self.st_dev == init.st_dev && self.st_ino == init.st_ino;
	if (!initsNamespace)
		return Error("no bpffs on /sys/fs/bpf, and this process runs in a private mount namespace (as "
				    "`ip netns exec` makes; or one it cannot tell from PID 1's): a bpffs mounted here "
				    "would die with it and detach the XDP forwarder; mount a bpffs that outlives it "
				    "(mount -t bpf bpf /run/portslice-bpf in the host) and give --xdp-pin-dir "
				    "/run/portslice-bpf/NAME (docs/operations.md)");
	if (::mount("bpf", existing.c_str(), "bpf", 0, "mode=0700") != 0)
		return errnoError(errno, "mounting bpffs on " + existing.string() + " for the XDP pins");
	return {};
}

bool forwarderPinned(const std::string &pinDir)
{
	std::error_code ec;
	return std::filesystem::exists(pinPath(pinDir, FWD_PIN_LINK), ec);
}

Status removeForwarder(const std::string &uplink, const std::string &pinDir)
{
	gKeptMaps.reset();
	uint32_t ifindex = uplink.empty() ? 0 : ::if_nametoindex(uplink.c_str());
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
		if (li && *li != 0)
			ifindex = *li;
	}
	if (ifindex != 0)
		if (Status s = detachRecord(ifindex); !s)
			return s.error().wrap("removing XDP forwarder");
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
