// SPDX-License-Identifier: MIT
// A failed apply changes nothing: a failure injected at each step of --apply-once (and of a Reload) leaves the kernel's whole portslice state as it was.
#include "ns_lab.h"

namespace portslice::dbuslab {
namespace {

// Generation A: s1 owns slice 0; timeouts set; no iifname source; s2 without
// `mac` (a managed neighbour entry for 192.0.2.12).
const std::string kFleetA = portslice::test::fixture("rollback-a.toml");

// Generation B changes every step: the table (slices, a source), every
// timeout, a return route (iifname IIF), the forwarder's maps (s2's MAC),
// the neighbour entries (s2's goes, a new server s3 without `mac` gets one).
std::string fleetB(const std::string &iifname = "up2", int udpTimeout = 300, const std::string &uplink = "up0")
{
	std::string b = kFleetA;
	auto swap = [&](const std::string &from, const std::string &to) { b.replace(b.find(from), from.size(), to); };
	swap("slices = { s1 = 0, s2 = [1, 2, 3] }", "slices = { s1 = [0, 1], s2 = [2, 3] }");
	swap("tcp_timeout_established = 3600\nudp_timeout = 40",
	     "tcp_timeout_established = 7200\ntcp_timeout_time_wait = 30\nudp_timeout = " + std::to_string(udpTimeout) +
		     "\nudp_timeout_stream = 160");
	swap("address = \"192.0.2.12\"\n", "address = \"192.0.2.12\"\nmac = \"02:00:00:00:00:22\"\n");
	swap("\n[[addresses]]", "\n[[servers]]\nname = \"s3\"\naddress = \"192.0.2.13\"\ndatacenter = \"lab1\"\n\n[[addresses]]");
	swap("uplink = \"up0\"", "uplink = \"" + uplink + "\"");
	b += "\n[[sources]]\nname = \"via-veth\"\nmatch = { iifname = \"" + iifname +
	     "\", saddr = \"100.64.2.0/24\" }\nwant = { country = \"GB\" }\nzone = 11\n";
	return b;
}

// The sysctl step: nf_conntrack_udp_timeout refuses the value (the kernel's
// ip_default_ttl, 1-255, is bind-mounted over it in a mount namespace of the
// run), after tcp_timeout_established and _time_wait were written.
const std::string kSysctlRefused =
	"unshare -m sh -c 'mount --bind /proc/sys/net/ipv4/ip_default_ttl "
	"/proc/sys/net/netfilter/nf_conntrack_udp_timeout && exec \"$0\" \"$@\"'";

struct Injection {
	const char *step;
	std::string config; // generation B with the fault
	std::string wrap;   // around portsliced
	std::string pins;   // the pin directory ("" the test's bpffs)
	const char *says;   // in the error
	std::string setup;  // in the namespace before the run
};

std::vector<Injection> injections(const std::string &tmpfsPins)
{
	return {
		{"sysctl", fleetB(), kSysctlRefused, "", "nf_conntrack_udp_timeout", ""},
		{"routes", fleetB("up4"), "", "", "via-veth", ""},
		{"xdp attach", fleetB("up2", 300, "up2"), "", "", "attaching to up2",
		 "ip link set dev up2 xdpgeneric obj " + std::string(PSD_BUILD_ROOT) + "/tests/lab/xdp_pass.bpf.o sec xdp"},
		{"missing uplink (checked first)", fleetB("up2", 300, "nope0"), "", "", "uplink nope0 does not exist", ""},
		{"pin directory not on bpffs (checked first)", fleetB(), "", tmpfsPins, "is not on a bpffs", ""},
		// `ip netns exec` remounts /sys: no bpffs on /sys/fs/bpf, and one
		// mounted there would die with the command, detaching the forwarder.
		{"no bpffs on /sys/fs/bpf in ip netns exec's mount namespace (checked first)", fleetB(), "",
		 "/sys/fs/bpf/portslice", "runs in a private mount namespace", ""},
	};
}

class RollbackLab : public NsLab {
protected:
	void inject(const Injection &i, const std::string &before)
	{
		SCOPED_TRACE(i.step);
		if (!i.setup.empty()) {
			Outcome set = inNs(i.setup);
			ASSERT_TRUE(set.ok()) << set.output;
		}
		writeConfig(i.config);
		Outcome run = daemon("--apply-once", i.pins, i.wrap);
		EXPECT_EQ(run.status, 1) << run.output;
		EXPECT_NE(run.output.find(i.says), std::string::npos) << run.output;
		EXPECT_EQ(run.output.find("putting back the previous state failed"), std::string::npos) << run.output;
		EXPECT_EQ(kernel(), before) << run.output;
		if (!i.setup.empty())
			(void)inNs("ip link set dev up2 xdpgeneric off");
	}
};

TEST_F(RollbackLab, AFailureAtAnyStepOverAnEmptyKernelLeavesNothing)
{
	fs::create_directories(dir_ / "tmpfs");
	std::string before = kernel();
	ASSERT_NE(before.find("udp_timeout = 30"), std::string::npos) << before;
	for (const Injection &i : injections((dir_ / "tmpfs" / "portslice").string()))
		inject(i, before);
	// The same file without a fault applies: the injections were the only reason.
	writeConfig(fleetB());
	Outcome ok = daemon("--apply-once");
	EXPECT_TRUE(ok.ok()) << ok.output;
	EXPECT_NE(kernel(), before);
}

TEST_F(RollbackLab, AFailureAtAnyStepPutsThePreviousGenerationBack)
{
	fs::create_directories(dir_ / "tmpfs");
	writeConfig(kFleetA);
	Outcome a = daemon("--apply-once");
	ASSERT_TRUE(a.ok()) << a.output;
	std::string before = kernel();
	ASSERT_NE(before.find("generation 1 "), std::string::npos) << before;
	ASSERT_NE(before.find("prog/xdp"), std::string::npos) << before;
	ASSERT_NE(before.find("neighbours:\n192.0.2.12 up0\n"), std::string::npos) << before;
	for (const Injection &i : injections((dir_ / "tmpfs" / "portslice").string()))
		inject(i, before);
	writeConfig(fleetB());
	Outcome ok = daemon("--apply-once");
	EXPECT_TRUE(ok.ok()) << ok.output;
	EXPECT_NE(ok.output.find("applied generation 2"), std::string::npos) << ok.output;
}

} // namespace
} // namespace portslice::dbuslab
