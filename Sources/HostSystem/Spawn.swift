#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation

/// An error running a host command, with what it printed.
public struct CommandError: Error, Sendable, CustomStringConvertible {
    public var command: [String]
    public var status: Int32
    public var output: String
    public var description: String {
        let out = output.trimmingCharacters(in: .whitespacesAndNewlines)
        return "\(command.joined(separator: " ")) exited with \(status)" + (out.isEmpty ? "" : ": \(out)")
    }
}

public struct SpawnError: Error, Sendable, CustomStringConvertible {
    public var executable: String
    public var errno: Int32
    public var description: String { "cannot start \(executable): \(String(cString: strerror(errno)))" }
}

/// Starting and reaping host processes without Foundation's Process, so that the agent
/// controls sessions, file descriptors and who reaps whom.
public enum HostProcess {
    /// How a process ended.
    public enum Termination: Sendable, Equatable, CustomStringConvertible {
        case exited(Int32)
        case signalled(Int32)
        public var description: String {
            switch self {
            case .exited(let c): return "exited with status \(c)"
            case .signalled(let s): return "killed by signal \(s)"
            }
        }
    }

    /// Runs `argv` to completion and returns its combined stdout and stderr.
    /// Throws ``CommandError`` when it exits non-zero.
    @discardableResult
    public static func run(_ argv: [String], input: String? = nil, environment: [String: String]? = nil) async throws -> String {
        let (status, output) = try await runCapturing(argv, input: input, environment: environment)
        guard status == .exited(0) else {
            let code: Int32
            switch status {
            case .exited(let c): code = c
            case .signalled(let s): code = 128 + s
            }
            throw CommandError(command: argv, status: code, output: output)
        }
        return output
    }

    /// Runs `argv` to completion; returns how it ended and what it printed (stdout and stderr).
    /// `onLine`, when given, also receives each line of output as it arrives (without its newline).
    public static func runCapturing(_ argv: [String], input: String? = nil, environment: [String: String]? = nil,
                                    onLine: (@Sendable (String) -> Void)? = nil) async throws -> (Termination, String) {
        var outPipe: [Int32] = [0, 0]
        guard pipe(&outPipe) == 0 else { throw SpawnError(executable: argv[0], errno: errno) }
        var inPipe: [Int32] = [-1, -1]
        if input != nil { guard pipe(&inPipe) == 0 else { throw SpawnError(executable: argv[0], errno: errno) } }
        let pid: pid_t
        do {
            pid = try spawn(argv, stdin: input != nil ? inPipe[0] : nil, stdout: outPipe[1], stderr: outPipe[1], newSession: false, environment: environment, closeInChild: [outPipe[0]] + (input != nil ? [inPipe[1]] : []))
        } catch {
            close(outPipe[0]); close(outPipe[1])
            if input != nil { close(inPipe[0]); close(inPipe[1]) }
            throw error
        }
        close(outPipe[1])
        if let input {
            close(inPipe[0])
            let fd = inPipe[1]
            let data = Array(input.utf8)
            Thread.detachNewThread {
                var off = 0
                while off < data.count {
                    let n = data[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                    if n <= 0 { break }
                    off += n
                }
                close(fd)
            }
        }
        let readFD = outPipe[0]
        return try await withCheckedThrowingContinuation { cont in
            Thread.detachNewThread {
                var bytes: [UInt8] = []
                var buf = [UInt8](repeating: 0, count: 65536)
                var lineStart = 0
                while true {
                    let n = buf.withUnsafeMutableBytes { read(readFD, $0.baseAddress, $0.count) }
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { break }
                    bytes.append(contentsOf: buf[0..<n])
                    if let onLine {
                        while let newline = bytes[lineStart...].firstIndex(of: UInt8(ascii: "\n")) {
                            onLine(String(decoding: bytes[lineStart..<newline], as: UTF8.self))
                            lineStart = newline + 1
                        }
                    }
                }
                if let onLine, lineStart < bytes.count { onLine(String(decoding: bytes[lineStart...], as: UTF8.self)) }
                close(readFD)
                let status = waitFor(pid)
                cont.resume(returning: (status, String(decoding: bytes, as: UTF8.self)))
            }
        }
    }

    /// Starts `argv` with the given standard streams (nil means /dev/null) and returns its pid.
    /// With `newSession` the child calls setsid(), so it survives the end of the agent's session
    /// and process group. Only stdio is inherited unless `keepFDs` names more descriptors.
    public static func spawn(
        _ argv: [String], stdin: Int32? = nil, stdout: Int32? = nil, stderr: Int32? = nil,
        newSession: Bool = false, environment: [String: String]? = nil, closeInChild: [Int32] = [],
        passing: [Int32] = []
    ) throws -> pid_t {
        precondition(!argv.isEmpty)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }

        for (target, source) in [(Int32(0), stdin), (1, stdout), (2, stderr)] {
            if let source {
                posix_spawn_file_actions_adddup2(&actions, source, target)
            } else {
                posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0)
            }
        }
        for fd in closeInChild { posix_spawn_file_actions_addclose(&actions, fd) }
        // `passing` becomes descriptors 3, 4, ... in the child. Sources are first copied above the
        // targets, so that no dup2 overwrites a source a later one still needs.
        var highCopies: [Int32] = []
        defer { for fd in highCopies { close(fd) } }
        for (i, fd) in passing.enumerated() {
            let high = fcntl(fd, F_DUPFD_CLOEXEC, Int32(3 + passing.count + 16))
            guard high >= 0 else { throw SpawnError(executable: argv[0], errno: errno) }
            highCopies.append(high)
            posix_spawn_file_actions_adddup2(&actions, high, Int32(3 + i))
        }
        // Nothing else crosses into the child: a long-lived child (QEMU) must not hold the
        // agent's listening sockets or database open after the agent exits.
        closeInheritedDescriptors(&actions, from: Int32(3 + passing.count), keep: [stdin, stdout, stderr].compactMap { $0 } + closeInChild)
        var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        if newSession { flags |= 0x80 }  // POSIX_SPAWN_SETSID (glibc; hidden behind _GNU_SOURCE)
        posix_spawnattr_setflags(&attr, Int16(flags))
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attr, &all)

        let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        let executable = try resolveExecutable(argv[0])
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup($0) } + [nil]
        defer {
            for p in cArgs { free(p) }
            for p in cEnv { free(p) }
        }
        var pid = pid_t()
        let rc = posix_spawn(&pid, executable, &actions, &attr, cArgs, cEnv)
        guard rc == 0 else { throw SpawnError(executable: argv[0], errno: rc) }
        return pid
    }

    /// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+), looked up at run time because
    /// the Swift Glibc module does not export it.
    static let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
        guard let sym = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }  // RTLD_DEFAULT
        return unsafeBitCast(sym, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()

    static func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t, from first: Int32 = 3, keep: [Int32]) {
        // dup2 targets below `first` are set up first; their sources are only read by dup2, which
        // runs in order before the close-from action, so closing everything from `first` is safe.
        if let closeFrom = addCloseFrom, closeFrom(&actions, first) == 0 { return }
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd"))?.compactMap { Int32($0) } ?? []
        for fd in fds where fd >= first && !keep.contains(fd) { posix_spawn_file_actions_addclose(&actions, fd) }
    }

    /// Finds `name` on PATH (or returns it when it contains a slash).
    public static func resolveExecutable(_ name: String) throws -> String {
        if name.contains("/") { return name }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        for dir in (path + ":/usr/sbin:/sbin").split(separator: ":") {
            let candidate = "\(dir)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        throw SpawnError(executable: name, errno: ENOENT)
    }

    /// Blocks until `pid` (a child of this process) ends, and reaps it.
    public static func waitFor(_ pid: pid_t) -> Termination {
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, 0)
            if r == pid { break }
            if r < 0 && errno == EINTR { continue }
            return .exited(-1)
        }
        return decode(status)
    }

    /// Reaps `pid` if it has ended; nil while it runs or when it is not our child.
    public static func reapIfExited(_ pid: pid_t) -> Termination? {
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        return r == pid ? decode(status) : nil
    }

    static func decode(_ status: Int32) -> Termination {
        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros; decode by hand.
        let sig = status & 0x7f
        if sig == 0 { return .exited((status >> 8) & 0xff) }
        return .signalled(sig)
    }

    /// Whether a process with this pid exists (zombies count as gone).
    public static func isAlive(_ pid: pid_t) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(close, offsetBy: 2)...].first
        return state != "Z" && state != "X"
    }

    /// The command line of a running process (`/proc/<pid>/cmdline`), or nil.
    public static func commandLine(of pid: pid_t) -> [String]? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty else { return nil }
        return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Resident set size of a process in bytes, from /proc.
    public static func residentBytes(of pid: pid_t) -> Int? { statusBytes(of: pid, field: "VmRSS") }

    /// A size field of /proc/<pid>/status (VmRSS, RssAnon, RssFile, ...) in bytes.
    public static func statusBytes(of pid: pid_t, field: String) -> Int? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in s.split(separator: "\n") where line.hasPrefix(field + ":") {
            let kb = line.split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }.first
            return kb.map { $0 * 1024 }
        }
        return nil
    }
}
