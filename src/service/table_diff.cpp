// SPDX-License-Identifier: MIT
// Parsing nft's listing into objects, their statements and their elements, and naming what differs.
#include "service/table_diff.h"

#include <algorithm>
#include <map>
#include <set>

namespace portslice::service {

namespace {

struct Object {
	std::vector<std::string> statements; // type, flags, policy, rules... in listed order
	std::multiset<std::string> elements;
};

struct Listing {
	std::vector<std::string> properties; // of the table itself (comment, flags)
	std::map<std::string, Object> objects; // "set my_ports", "chain postrouting", ...
	bool found = false;
};

std::string_view trim(std::string_view s)
{
	while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
		s.remove_prefix(1);
	while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
		s.remove_suffix(1);
	return s;
}

int balance(std::string_view s)
{
	int b = 0;
	bool quoted = false;
	for (char c : s) {
		if (c == '"')
			quoted = !quoted;
		else if (!quoted && c == '{')
			b++;
		else if (!quoted && c == '}')
			b--;
	}
	return b;
}

// Split "a, b, { c, d }, e" at the commas outside braces.
std::vector<std::string> splitElements(std::string_view text)
{
	std::vector<std::string> out;
	int depth = 0;
	std::string current;
	for (char c : text) {
		if (c == '{')
			depth++;
		else if (c == '}')
			depth--;
		if (c == ',' && depth == 0) {
			out.emplace_back(trim(current));
			current.clear();
			continue;
		}
		current += c;
	}
	if (!trim(current).empty())
		out.emplace_back(trim(current));
	return out;
}

Listing parse(std::string_view text)
{
	Listing listing;
	std::vector<std::string_view> lines;
	for (size_t at = 0; at <= text.size();) {
		size_t end = text.find('\n', at);
		if (end == std::string_view::npos)
			end = text.size();
		std::string_view line = trim(text.substr(at, end - at));
		if (!line.empty())
			lines.push_back(line);
		at = end + 1;
	}
	int depth = 0;
	Object *object = nullptr;
	for (size_t i = 0; i < lines.size(); i++) {
		std::string_view line = lines[i];
		if (depth == 0) {
			if (line.starts_with("table ") && line.ends_with("{")) {
				depth = 1;
				listing.found = true;
			}
			continue;
		}
		if (depth == 1) {
			if (line == "}") {
				depth = 0;
			} else if (line.ends_with("{")) {
				object = &listing.objects[std::string(trim(line.substr(0, line.size() - 1)))];
				depth = 2;
			} else {
				listing.properties.emplace_back(line);
			}
			continue;
		}
		if (line == "}") {
			depth = 1;
			object = nullptr;
			continue;
		}
		// A statement may go on over several lines while a brace is open.
		std::string statement(line);
		int open = balance(line);
		while (open > 0 && i + 1 < lines.size()) {
			std::string_view next = lines[++i];
			statement += (statement.ends_with("{") || next.starts_with("}") ? " " : " ") + std::string(next);
			open += balance(next);
		}
		if (statement.starts_with("elements = {")) {
			std::string_view inner = std::string_view(statement).substr(12);
			if (!inner.empty() && inner.back() == '}')
				inner.remove_suffix(1);
			for (std::string &e : splitElements(inner))
				object->elements.insert(std::move(e));
		} else {
			object->statements.push_back(std::move(statement));
		}
	}
	return listing;
}

void compareLines(const std::string &what, const std::vector<std::string> &plan, const std::vector<std::string> &live,
		  std::vector<std::string> &out)
{
	std::multiset<std::string> a(plan.begin(), plan.end()), b(live.begin(), live.end());
	std::vector<std::string> missing, extra;
	std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(missing));
	std::set_difference(b.begin(), b.end(), a.begin(), a.end(), std::back_inserter(extra));
	for (const std::string &m : missing)
		out.push_back(what + ": '" + m + "' missing from the kernel");
	for (const std::string &e : extra)
		out.push_back(what + ": '" + e + "' in the kernel, not in the plan");
	if (missing.empty() && extra.empty() && plan != live)
		out.push_back(what + ": the kernel has the same statements in another order");
}

} // namespace

std::vector<std::string> compareTables(std::string_view planText, std::string_view liveText, bool elements)
{
	Listing plan = parse(planText), live = parse(liveText);
	std::vector<std::string> out;
	if (!live.found) {
		out.push_back("table inet portslice: missing from the kernel");
		return out;
	}
	compareLines("table inet portslice", plan.properties, live.properties, out);
	for (const auto &[name, object] : plan.objects) {
		auto it = live.objects.find(name);
		if (it == live.objects.end()) {
			out.push_back(name + ": missing from the kernel");
			continue;
		}
		compareLines(name, object.statements, it->second.statements, out);
		if (!elements)
			continue;
		std::vector<std::string> missing, extra;
		std::set_difference(object.elements.begin(), object.elements.end(), it->second.elements.begin(),
				    it->second.elements.end(), std::back_inserter(missing));
		std::set_difference(it->second.elements.begin(), it->second.elements.end(), object.elements.begin(),
				    object.elements.end(), std::back_inserter(extra));
		for (const std::string &m : missing)
			out.push_back(name + ": element " + m + " missing from the kernel");
		for (const std::string &e : extra)
			out.push_back(name + ": element " + e + " in the kernel, not in the plan");
	}
	for (const auto &[name, object] : live.objects)
		if (!plan.objects.contains(name))
			out.push_back(name + ": in the kernel, not in the plan");
	return out;
}

} // namespace portslice::service
