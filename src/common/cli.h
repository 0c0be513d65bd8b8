// SPDX-License-Identifier: MIT
// The command-line conventions both programs share, on CLI11: --help and --version to standard output with exit 0, usage errors to standard error with exit 2.
#pragma once

#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "common/quote.h"
#include "common/version.h"

namespace portslice::cli {

constexpr int kExitUsage = 2;

// CLI11's layout, with an option's value named only by its type_name (defaults
// and exclusions are said in the descriptions) and positionals by their
// type_name, so that a usage line reads like the man page's synopsis.
class Formatter : public CLI::Formatter {
public:
	std::string make_option_name(const CLI::Option *opt, bool positional) const override
	{
		if (positional)
			return opt->get_type_name().empty() ? opt->get_name() : opt->get_type_name();
		return CLI::Formatter::make_option_name(opt, positional);
	}
	std::string make_option_opts(const CLI::Option *opt) const override
	{
		if (opt->get_positional() || opt->get_type_size() == 0 || opt->get_type_name().empty())
			return "";
		return " " + opt->get_type_name();
	}
	std::string make_option_usage(const CLI::Option *opt) const override
	{
		return opt->get_positional() ? make_option_name(opt, true) : CLI::Formatter::make_option_usage(opt);
	}
};

// --help, --version and the error message of one program; call before adding options.
inline void setUp(CLI::App &app)
{
	app.set_help_flag("-h,--help", "print this help and exit");
	app.set_version_flag("--version", app.get_name() + " " PORTSLICE_VERSION, "print the version and exit");
	const std::string name = app.get_name();
	app.failure_message([name](const CLI::App *failed, const CLI::Error &e) {
		// CLI11's messages quote the arguments as they are: cut like any input.
		bool commands = !failed->get_subcommands({}).empty() || failed->get_parent() != nullptr;
		return name + ": " + quoteInput(e.what(), '\0') + "\n" + "try '" + name + " --help'" +
		       (commands ? " (or '" + name + " COMMAND --help')" : std::string()) + "\n";
	});
	auto formatter = std::make_shared<Formatter>();
	formatter->column_width(30);
	app.formatter(formatter);
}

// A subcommand with the same --help flag as the program.
inline CLI::App *addCommand(CLI::App &app, const std::string &name, const std::string &description)
{
	CLI::App *command = app.add_subcommand(name, description);
	command->set_help_flag("-h,--help", "print this help and exit");
	return command;
}

// nullopt when the arguments parsed and the program goes on; otherwise its
// exit code: 0 after printing help or the version, kExitUsage after an error.
inline std::optional<int> parse(CLI::App &app, int argc, char **argv)
{
	// A first word that is no command of a program of commands: say which
	// (CLI11 would only say that a command is required).
	if (argc > 1 && argv[1][0] != '-' && !app.get_subcommands({}).empty()) {
		bool known = false;
		for (const CLI::App *command : app.get_subcommands({}))
			known = known || command->check_name(argv[1]);
		if (!known) {
			std::cerr << app.get_name() << ": unknown command " << quoteInput(argv[1]) << "\ntry '"
				  << app.get_name() << " --help'\n";
			return kExitUsage;
		}
	}
	try {
		app.parse(argc, argv);
		return std::nullopt;
	} catch (const CLI::ParseError &e) {
		return app.exit(e, std::cout, std::cerr) == 0 ? 0 : kExitUsage;
	}
}

} // namespace portslice::cli
