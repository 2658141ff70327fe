import Foundation
import Testing

let isRoot = getuid() == 0
let rootOnly = "needs root and a kernel with nftables (CI runs these as root)"

/// Every kernel and traffic suite, one after the other: they time real packets and the
/// daemon's reactions, which parallel suites on two cores would make flaky.
@Suite(.serialized, .enabled(if: isRoot, "\(rootOnly)"))
struct RootTests {}

struct CommandResult {
    var out: String
    var err: String
    var code: Int32
}

/// Runs a program (no shell) and waits for it, at most `timeout` seconds.
@discardableResult
func run(_ args: [String], stdin: String? = nil, env: [String: String] = [:], timeout: Double = 120) throws -> CommandResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: args[0].hasPrefix("/") ? args[0] : "/usr/bin/env")
    p.arguments = args[0].hasPrefix("/") ? Array(args.dropFirst()) : args
    var environment = ProcessInfo.processInfo.environment
    for (k, v) in env { environment[k] = v }
    p.environment = environment
    let outPipe = Pipe(), errPipe = Pipe(), inPipe = Pipe()
    p.standardOutput = outPipe
    p.standardError = errPipe
    p.standardInput = inPipe
    try p.run()
    if let stdin { inPipe.fileHandleForWriting.write(stdin.data(using: .utf8)!) }
    try? inPipe.fileHandleForWriting.close()
    final class Box: @unchecked Sendable { var data = Data() }
    let out = Box(), err = Box()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async {
        out.data = outPipe.fileHandleForReading.readDataToEndOfFile(); group.leave()
    }
    group.enter()
    DispatchQueue.global().async {
        err.data = errPipe.fileHandleForReading.readDataToEndOfFile(); group.leave()
    }
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(10_000) }
    if p.isRunning { p.terminate(); usleep(100_000); if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
    p.waitUntilExit()
    group.wait()
    return CommandResult(
        out: String(decoding: out.data, as: UTF8.self), err: String(decoding: err.data, as: UTF8.self), code: p.terminationStatus)
}

/// The svcnat binary built next to the test bundle.
let svcnatPath: String = {
    let dir = Bundle.module.bundleURL.deletingLastPathComponent()
    return dir.appendingPathComponent("svcnat").path
}()

func helper(_ name: String) -> String {
    Bundle.module.url(forResource: "Helpers/\(name)", withExtension: nil)!.path
}

let examples: String = {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("examples").path
}()

/// Network namespaces made by one test, all named svcnat-test-*, and the processes started in
/// them. `close()` removes every one, whatever happened; tests call it in `defer`.
final class Testbed {
    let id: String
    private(set) var namespaces: [String] = []
    private var processes: [Process] = []
    private var files: [String] = []

    init(_ label: String) {
        id = "\(label)-\(getpid() % 100000)-\(Int.random(in: 0..<10000))"
    }

    func ns(_ role: String) -> String { "svcnat-test-\(id)-\(role)" }

    @discardableResult
    func addNamespace(_ role: String) throws -> String {
        let n = ns(role)
        let r = try run(["ip", "netns", "add", n])
        guard r.code == 0 else { throw TestbedError("ip netns add \(n): \(r.err)") }
        namespaces.append(n)
        try sh(n, ["ip", "link", "set", "lo", "up"])
        return n
    }

    /// Runs a command inside a namespace; throws when it fails.
    @discardableResult
    func sh(_ namespace: String, _ args: [String], stdin: String? = nil) throws -> String {
        let r = try run(["ip", "netns", "exec", namespace] + args, stdin: stdin)
        guard r.code == 0 else { throw TestbedError("\(args.joined(separator: " ")) in \(namespace): exit \(r.code): \(r.err)") }
        return r.out
    }

    func exec(_ namespace: String, _ args: [String], stdin: String? = nil, env: [String: String] = [:]) throws -> CommandResult {
        try run(["ip", "netns", "exec", namespace] + args, stdin: stdin, env: env)
    }

    func svcnat(_ namespace: String, _ args: [String], stdin: String? = nil, env: [String: String] = [:]) throws -> CommandResult {
        try exec(namespace, [svcnatPath] + args, stdin: stdin, env: env)
    }

    /// A node namespace linked to an external client and to `pods` pod namespaces, following
    /// the test address plan (with `ipv6`, its IPv6 part too). Nothing links to the root
    /// namespace.
    func topology(pods: Int, ipv6: Bool = false) throws {
        let node = try addNamespace("node"), client = try addNamespace("client")
        try run(["ip", "-n", node, "link", "add", "client", "type", "veth", "peer", "name", "eth0", "netns", client])
        try sh(node, ["ip", "addr", "add", "198.18.0.1/24", "dev", "client"])
        try sh(node, ["ip", "link", "set", "client", "up"])
        try sh(client, ["ip", "addr", "add", "198.18.0.2/24", "dev", "eth0"])
        try sh(client, ["ip", "link", "set", "eth0", "up"])
        // Service addresses, and external and load-balancer IPs, are reached through the node.
        try sh(client, ["ip", "route", "add", "198.18.100.0/24", "via", "198.18.0.1"])
        try sh(client, ["ip", "route", "add", "198.18.200.0/24", "via", "198.18.0.1"])
        try sh(node, ["ip", "route", "add", "default", "via", "198.18.0.2"])
        try sh(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        try sh(node, ["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"])
        for i in 1...max(pods, 1) where pods > 0 {
            let pod = try addNamespace("pod\(i)")
            try run(["ip", "-n", node, "link", "add", "pod\(i)", "type", "veth", "peer", "name", "eth0", "netns", pod])
            try sh(node, ["ip", "addr", "add", "198.19.\(i).1/24", "dev", "pod\(i)"])
            try sh(node, ["ip", "link", "set", "pod\(i)", "up"])
            try sh(pod, ["ip", "addr", "add", "198.19.\(i).2/24", "dev", "eth0"])
            try sh(pod, ["ip", "link", "set", "eth0", "up"])
            try sh(pod, ["ip", "route", "add", "default", "via", "198.19.\(i).1"])
        }
        if ipv6 { try addIPv6(pods: pods) }
    }

    /// 2001:db8::/64 between node (::1) and client (::2); pod link i is 2001:db8:1:i::/64
    /// (node ::1, pod ::2); the client reaches Service and load-balancer addresses through the
    /// node. `nodad`: the addresses are usable at once.
    private func addIPv6(pods: Int) throws {
        let node = ns("node"), client = ns("client")
        try sh(node, ["ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "client", "nodad"])
        try sh(client, ["ip", "-6", "addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad"])
        try sh(client, ["ip", "-6", "route", "add", "2001:db8:100::/112", "via", "2001:db8::1"])
        try sh(client, ["ip", "-6", "route", "add", "2001:db8:200::/112", "via", "2001:db8::1"])
        try sh(node, ["ip", "-6", "route", "add", "default", "via", "2001:db8::2"])
        try sh(node, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        for i in 1...max(pods, 1) where pods > 0 {
            let pod = ns("pod\(i)")
            try sh(node, ["ip", "-6", "addr", "add", "2001:db8:1:\(i)::1/64", "dev", "pod\(i)", "nodad"])
            try sh(pod, ["ip", "-6", "addr", "add", "2001:db8:1:\(i)::2/64", "dev", "eth0", "nodad"])
            try sh(pod, ["ip", "-6", "route", "add", "default", "via", "2001:db8:1:\(i)::1"])
        }
        // The links' own fe80:: addresses still go through duplicate address detection, and
        // neighbour discovery waits for them: wait (at most 5 s) until none is tentative.
        let deadline = Date().addingTimeInterval(5)
        for n in namespaces where Date() < deadline {
            while Date() < deadline, !(try sh(n, ["ip", "-6", "addr", "show", "tentative"])).isEmpty { usleep(50_000) }
        }
    }

    /// The topology with a test server on port 8080 in every pod.
    func servedTopology(pods: Int, ipv6: Bool = false) throws {
        try topology(pods: pods, ipv6: ipv6)
        for i in 1...pods { try startServer(pod: i, port: 8080) }
    }

    /// Starts the test server in pod i (name "pod<i>"), waits until it listens.
    func startServer(pod i: Int, port: Int) throws { try startServer(in: ns("pod\(i)"), name: "pod\(i)", port: port) }

    /// Makes drops observable: the client namespace takes every address of `prefix` as its own
    /// (a local route) and answers on `port` as "sink". A packet the node should have dropped or
    /// NATed but routed on un-NATed towards the client gets that answer, instead of a timeout
    /// that looks like a drop. The client then answers pods through the node, and its own
    /// packets to `prefix` stay in it.
    func startSink(prefix: String = "198.18.100.0/24", port: Int) throws {
        let client = ns("client")
        try sh(client, ["ip", "route", "add", "local", prefix, "dev", "lo"])
        try sh(client, ["ip", "route", "replace", "198.19.0.0/16", "via", "198.18.0.1"])
        try startServer(in: client, name: "sink", port: port)
    }

    func startServer(in namespace: String, name: String, port: Int) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        p.arguments = ["netns", "exec", namespace, "python3", helper("server.py"), name, String(port), "600"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        processes.append(p)
        let line = out.fileHandleForReading.availableDataUntilNewline(timeout: 10)
        guard line.contains("ready") else { throw TestbedError("server \(name) did not start") }
    }

    /// A background process (the daemon, nft monitor) whose output goes to a file.
    final class Background {
        let process: Process
        let logPath: String
        init(process: Process, logPath: String) {
            self.process = process
            self.logPath = logPath
        }
        func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
        func signal(_ s: Int32) { kill(process.processIdentifier, s) }
        /// The exit status, or nil if it did not exit in time.
        func waitExit(seconds: Double) -> Int32? {
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            return process.isRunning ? nil : process.terminationStatus
        }
    }

    func startProcessWithEnv(_ namespace: String, _ args: [String], env: [String: String]) throws -> Background {
        try startProcess(namespace, args, env: env)
    }

    func startProcess(_ namespace: String, _ args: [String], env: [String: String] = [:]) throws -> Background {
        let logPath = NSTemporaryDirectory() + "svcnat-test-\(id)-\(files.count).log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        files.append(logPath)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        p.arguments = ["netns", "exec", namespace] + args
        if !env.isEmpty {
            var e = ProcessInfo.processInfo.environment
            for (k, v) in env { e[k] = v }
            p.environment = e
        }
        let handle = FileHandle(forWritingAtPath: logPath)!
        p.standardOutput = handle
        p.standardError = handle
        p.standardInput = FileHandle.nullDevice
        try p.run()
        processes.append(p)
        return Background(process: p, logPath: logPath)
    }

    func startDaemon(_ namespace: String, _ args: [String]) throws -> Background {
        try startProcess(namespace, [svcnatPath, "run"] + args)
    }

    func makeDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "svcnat-test-\(id)-dir\(files.count)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        files.append(path)
        return path
    }

    func writeManifest(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "svcnat-test-\(id)-\(files.count).yaml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        files.append(path)
        return path
    }

    func close() {
        for p in processes where p.isRunning {
            kill(-p.processIdentifier, SIGKILL)
            p.terminate()
            usleep(20_000)
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
        for n in namespaces {
            // Kill anything still running inside, then remove the namespace.
            if let r = try? run(["ip", "netns", "pids", n]) {
                for pid in r.out.split(separator: "\n").compactMap({ Int32($0) }) { kill(pid, SIGKILL) }
            }
            _ = try? run(["ip", "netns", "del", n])
        }
        for f in files { try? FileManager.default.removeItem(atPath: f) }
    }
}

struct TestbedError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

extension FileHandle {
    func availableDataUntilNewline(timeout: Double) -> String {
        var data = Data()
        let deadline = Date().addingTimeInterval(timeout)
        var pfd = pollfd(fd: fileDescriptor, events: Int16(POLLIN), revents: 0)
        while Date() < deadline && !data.contains(UInt8(ascii: "\n")) {
            if poll(&pfd, 1, 100) > 0 {
                let chunk = availableData
                if chunk.isEmpty { break }
                data.append(chunk)
            }
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Client results, as client.py prints them.
struct ClientResult: Decodable {
    var answers: [String: Int]
    var sources: [String: Int]
    var refused: Int
    var timeouts: Int
    var seconds: Double
}

extension Testbed {
    func client(in namespace: String, _ proto: String, _ ip: String, _ port: Int, count: Int, from source: String? = nil) throws
        -> ClientResult
    {
        let out = try sh(namespace, ["python3", helper("client.py"), proto, ip, String(port), String(count)] + (source.map { [$0] } ?? []))
        return try JSONDecoder().decode(ClientResult.self, from: Data(out.utf8))
    }
}

extension Testbed {
    /// Session affinity from the client's side: `count` connections from each source address to
    /// ip:port must all reach one pod; returns the pod each source got.
    func affinityChoices(in namespace: String, _ ip: String, _ port: Int, sources: [String], count: Int) throws -> [String: String] {
        var chosen: [String: String] = [:]
        for a in sources {
            let got = try client(in: namespace, "tcp", ip, port, count: count, from: a)
            #expect(got.answers.count == 1 && got.answers.values.first == count, "client \(a): \(got.answers)")
            chosen[a] = got.answers.keys.first
        }
        return chosen
    }
}

/// Pearson's chi-square statistic of counts against a uniform spread.
func chiSquare(_ counts: [Int]) -> Double {
    let total = Double(counts.reduce(0, +)), expected = total / Double(counts.count)
    return counts.reduce(0.0) { $0 + pow(Double($1) - expected, 2) / expected }
}

/// A Service with ClusterIP `ip`, TCP and UDP port 80 -> 8080 on pods 198.19.<i>.2.
/// A ready Pod at 198.19.<i>.2 in namespace demo, as one more YAML document.
func readyPod(_ name: String, _ i: Int, labels: String, node: String? = nil) -> String {
    """
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: \(name), namespace: demo, labels: \(labels)}
    \(node.map { "spec: {nodeName: \($0)}\n" } ?? "")status: {podIP: 198.19.\(i).2, phase: Running, conditions: [{type: Ready, status: "True"}]}

    """
}

func serviceManifest(name: String = "web", ip: String = "198.18.100.20", pods: [Int]) -> String {
    var s = """
        apiVersion: v1
        kind: Service
        metadata: {name: \(name), namespace: demo}
        spec:
          clusterIP: \(ip)
          selector: {app: \(name)}
          ports:
            - {name: http, protocol: TCP, port: 80, targetPort: web}
            - {name: dns, protocol: UDP, port: 53, targetPort: 8080}

        """
    for i in pods {
        s += """
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: \(name)-\(i), namespace: demo, labels: {app: \(name)}}
            spec:
              containers:
                - name: c
                  ports: [{name: web, containerPort: 8080}]
            status: {podIP: 198.19.\(i).2, phase: Running, conditions: [{type: Ready, status: "True"}]}

            """
    }
    return s
}

/// One possible fate of a connection, as `svcnat explain --source --format json` gives it.
struct ExplainedOutcome: Hashable {
    var fate: String
    var pod: String?  // "pod1" for 198.19.1.2, the test topology's naming
    var masqueraded: Bool
    var probability: String
}

extension Testbed {
    /// `svcnat explain DEST --source IP` in a namespace: every outcome of every walk.
    func explain(_ namespace: String, _ args: [String]) throws -> [ExplainedOutcome] {
        let r = try svcnat(namespace, ["explain", "--format", "json"] + args)
        guard r.code == 0, let views = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [[String: Any]] else {
            throw TestbedError("explain \(args) failed: \(r.err)\(r.out)")
        }
        var out: [ExplainedOutcome] = []
        for v in views {
            for w in v["walks"] as? [[String: Any]] ?? [] {
                for o in w["outcomes"] as? [[String: Any]] ?? [] {
                    // 198.19.<i>.2:port or [2001:db8:1:<i>::2]:port is pod i.
                    let pod = (o["endpoint"] as? String).map {
                        $0.hasPrefix("[") ? "pod" + $0.split(separator: ":")[3] : "pod" + $0.split(separator: ".")[2]
                    }
                    out.append(
                        ExplainedOutcome(
                            fate: o["fate"] as! String, pod: pod, masqueraded: o["masqueraded"] as! Bool,
                            probability: o["probability"] as! String))
                }
            }
        }
        return out
    }
}

/// Polls `check` every 50 ms for at most `seconds`; returns the time it took, or nil.
func within(_ seconds: Double, _ check: () throws -> Bool) rethrows -> Double? {
    let start = Date()
    while Date().timeIntervalSince(start) < seconds {
        if try check() { return Date().timeIntervalSince(start) }
        usleep(50_000)
    }
    return nil
}
