// SPDX-License-Identifier: MIT
// Stats() rows as the Prometheus text format of docs/operations.md, "Reading stats", shared by `portslicectl stats --prometheus` and `portsliced --metrics-file`.
#pragma once

#include <string>
#include <vector>

#include "common/result.h"
#include "service/backend.h"

namespace portslice::service {

// What the rows do not hold: the daemon's identity and state.
struct MetricsInfo {
	std::string version; // of the daemon (portsliced) or of the reader
	std::string server;
	std::string state; // applied, degraded, failed
};

// The exposition text: a HELP and TYPE line per metric, one label per
// meaning (address, slice, source, verdict, server), ratios 0-1. Rows of a
// kind or counter not named in docs/operations.md, "Reading stats", become
// portslice_KIND_COUNTER{KIND="name"}, so nothing the daemon reports is lost.
std::string prometheusText(const MetricsInfo &info, const std::vector<StatRow> &rows);

// Replace `path` with `text` atomically: a temporary file in the same
// directory, written, fsynced and renamed over it, so that a reader (the
// node_exporter textfile collector) never sees it empty or half written.
Status writeFileAtomically(const std::string &path, const std::string &text);

} // namespace portslice::service
