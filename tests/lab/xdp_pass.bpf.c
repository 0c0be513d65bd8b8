// SPDX-License-Identifier: MIT
// Lab only: an XDP program that passes everything, attached to the DC bridge's veth ports so XDP_TX frames from a server's forwarder are flushed to them at once.
#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))

SEC("xdp")
int lab_xdp_pass(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual MIT/GPL";
