// SPDX-License-Identifier: MIT
// The lab tests' one way to run programs: a command waited for (bounded, output captured), or one started in the background and stopped.
#pragma once

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <spawn.h>
#include <sstream>
#include <string>
#include <string_view>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char **environ;

namespace portslice::lab {

struct CommandResult {
	int status = -1;    // exit code; 128+N when killed by signal N; 124 on timeout
	std::string output; // stdout and stderr, interleaved
	bool ok() const { return status == 0; }
};

// Runs argv (no shell), capturing stdout+stderr, killed after timeoutSeconds.
inline CommandResult runArgv(const std::vector<std::string> &argv, int timeoutSeconds = 60)
{
	CommandResult result;
	std::vector<std::string> full = {"timeout", "--kill-after=2", std::to_string(timeoutSeconds)};
	full.insert(full.end(), argv.begin(), argv.end());
	std::vector<char *> args;
	for (auto &a : full)
		args.push_back(a.data());
	args.push_back(nullptr);

	int fds[2];
	if (pipe2(fds, O_CLOEXEC) != 0) {
		result.output = "pipe failed";
		return result;
	}
	int readEnd = fds[0], writeEnd = fds[1];
	posix_spawn_file_actions_t actions;
	posix_spawn_file_actions_init(&actions);
	posix_spawn_file_actions_adddup2(&actions, writeEnd, STDOUT_FILENO);
	posix_spawn_file_actions_adddup2(&actions, writeEnd, STDERR_FILENO);
	posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
	pid_t pid = -1;
	int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
	posix_spawn_file_actions_destroy(&actions);
	::close(writeEnd);
	if (rc != 0) {
		::close(readEnd);
		result.output = "cannot run timeout(1): " + std::string(strerror(rc));
		return result;
	}
	char buf[4096];
	for (;;) {
		ssize_t n = read(readEnd, buf, sizeof(buf));
		if (n > 0)
			result.output.append(buf, static_cast<size_t>(n));
		else if (n == 0 || errno != EINTR)
			break;
	}
	::close(readEnd);
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
	}
	result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	return result;
}

// Runs `sh -c command` in the caller's namespace.
inline CommandResult runShell(const std::string &command, int timeoutSeconds = 60)
{
	return runArgv({"sh", "-c", command}, timeoutSeconds);
}

// 'it'\''s' style quoting, for building shell commands from values.
inline std::string shellQuote(std::string_view s)
{
	std::string q = "'";
	for (char c : s) {
		if (c == '\'')
			q += "'\\''";
		else
			q += c;
	}
	return q + "'";
}

inline std::string readFile(const std::string &path)
{
	std::ifstream in(path);
	std::stringstream text;
	text << in.rdbuf();
	return text.str();
}

struct SpawnOptions {
	std::vector<std::string> env; // "NAME=value", added to (or replacing in) this process's environment
	bool append = false;          // append to logFile instead of truncating it
	bool ownGroup = false;        // leader of a process group of its own, for stopProcess(..., group)
};

// Starts argv (PATH searched) in the background, stdin /dev/null, stdout and
// stderr to logFile ("/dev/null" to drop them). -1 (and a test failure) when
// it cannot start.
inline pid_t spawnProcess(const std::vector<std::string> &argv, const std::string &logFile,
			  const SpawnOptions &options = {})
{
	std::vector<std::string> words = argv;
	std::vector<char *> args;
	for (auto &w : words)
		args.push_back(w.data());
	args.push_back(nullptr);
	std::vector<std::string> envText;
	for (char **e = environ; *e; ++e) {
		std::string_view entry(*e);
		bool replaced = false;
		for (const std::string &mine : options.env)
			replaced = replaced || entry.substr(0, entry.find('=') + 1) == mine.substr(0, mine.find('=') + 1);
		if (!replaced)
			envText.emplace_back(entry);
	}
	envText.insert(envText.end(), options.env.begin(), options.env.end());
	std::vector<char *> envp;
	for (auto &e : envText)
		envp.push_back(e.data());
	envp.push_back(nullptr);

	posix_spawn_file_actions_t actions;
	posix_spawn_file_actions_init(&actions);
	posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, logFile.c_str(),
					 O_WRONLY | O_CREAT | (options.append ? O_APPEND : O_TRUNC), 0644);
	posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
	posix_spawnattr_t attributes;
	posix_spawnattr_init(&attributes);
	if (options.ownGroup) {
		posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
		posix_spawnattr_setpgroup(&attributes, 0);
	}
	pid_t pid = -1;
	int rc = posix_spawnp(&pid, args[0], &actions, &attributes, args.data(), envp.data());
	posix_spawnattr_destroy(&attributes);
	posix_spawn_file_actions_destroy(&actions);
	if (rc != 0) {
		ADD_FAILURE() << "cannot start " << argv.front() << ": " << strerror(rc);
		return -1;
	}
	return pid;
}

// Sends `signal` to pid (to its whole process group when `group`), SIGKILL
// after `grace`, and reaps it; the exit status as CommandResult counts it, -1
// when pid was not a child. pid is reset to -1.
inline int stopProcess(pid_t &pid, int signal = SIGTERM, std::chrono::milliseconds grace = std::chrono::seconds(3),
		       bool group = false)
{
	if (pid <= 0)
		return -1;
	::kill(group ? -pid : pid, signal);
	int status = 0;
	auto deadline = std::chrono::steady_clock::now() + grace;
	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			break;
		if (r < 0 && errno != EINTR) {
			pid = -1;
			return -1;
		}
		if (std::chrono::steady_clock::now() > deadline) {
			::kill(group ? -pid : pid, SIGKILL);
			while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
			}
			break;
		}
		std::this_thread::sleep_for(std::chrono::milliseconds(10));
	}
	pid = -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Network namespaces "PREFIX-PID-N" whose test process PID is gone (killed
// before its TearDown ran): deleted, so a killed run leaves no namespace
// behind for long.
inline void removeStaleNamespaces(const std::string &prefix)
{
	CommandResult listed = runShell("ip netns list", 10);
	std::istringstream lines(listed.output);
	std::string name;
	while (lines >> name) {
		if (name.rfind(prefix + "-", 0) != 0) {
			lines.ignore(1 << 12, '\n');
			continue;
		}
		std::string rest = name.substr(prefix.size() + 1);
		size_t dash = rest.find('-');
		pid_t pid = static_cast<pid_t>(std::atol(rest.substr(0, dash).c_str()));
		if (dash != std::string::npos && pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH)
			(void)runShell("ip netns del " + shellQuote(name), 10);
		lines.ignore(1 << 12, '\n');
	}
}

} // namespace portslice::lab
