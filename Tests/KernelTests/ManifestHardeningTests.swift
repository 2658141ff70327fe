import Foundation
import Testing

extension RootTests.DaemonTests {
    /// A minimal Service with no endpoints, number `i` (ClusterIP 198.18.120.0 upwards).
    static func numbered(_ i: Int) -> String {
        """
        apiVersion: v1
        kind: Service
        metadata: {name: s\(i), namespace: many}
        spec: {clusterIP: 198.18.\(120 + i / 250).\(i % 250 + 1), ports: [{port: 80}]}

        """
    }

    /// A FIFO named `*.yaml` hung `apply` forever and wedged the daemon (which then ignored
    /// SIGTERM and still answered /healthz 200). Now it is skipped with a warning, and named
    /// directly it is an error.
    @Test func aFIFONamedYAMLHangsNeitherApplyNorTheDaemon() throws {
        let bed = Testbed("fifo")
        defer { bed.close() }
        let n = try bed.addNamespace("node")
        let dir = try bed.makeDirectory()
        try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1]))
        #expect(mkfifo(dir + "/pipe.yaml", 0o644) == 0)
        let start = Date()
        let dry = try bed.svcnat(n, ["apply", "--dry-run", "-f", dir])
        #expect(dry.code == 0 && dry.err.contains("pipe.yaml: skipped: not a regular file (a FIFO"), "\(dry.code) \(dry.err)")
        let named = try bed.svcnat(n, ["apply", "--dry-run", "-f", dir + "/pipe.yaml"])
        #expect(named.code == 2 && named.err.contains("is not a regular file"), "\(named.code) \(named.err)")
        #expect(Date().timeIntervalSince(start) < 10)

        let daemon = try bed.startDaemon(n, ["--manifests", dir, "--min-sync-period", "100ms"])
        #expect(within(5) { ruleset(bed, n).contains("198.19.1.2") } != nil, "\(daemon.log())")
        // A new FIFO while running, then a real change: both handled, the daemon still answers.
        #expect(mkfifo(dir + "/pipe2.yaml", 0o644) == 0)
        try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [2]))
        #expect(within(3) { ruleset(bed, n).contains("198.19.2.2") } != nil, "\(daemon.log())")
        daemon.signal(SIGTERM)
        #expect(daemon.waitExit(seconds: 5) == 0, "\(daemon.log())")
    }

    /// A 558-byte alias bomb took 739 MB at 7 levels and aborted at 9. Now a kind svcnat skips
    /// is skipped before expansion, and a Service that expands past 4 times its size is refused.
    @Test func anAliasBombIsSkippedOrRefusedAtOnce() throws {
        let bed = Testbed("bomb")
        defer { bed.close() }
        let n = try bed.addNamespace("node")
        var lines = [
            "apiVersion: v1", "kind: ConfigMap", "metadata: {name: bomb}", "data:", "  a0: &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]"
        ]
        for i in 1...9 { lines.append("  a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 9).joined(separator: ",") + "]") }
        let configMap = lines.joined(separator: "\n") + "\n"
        let service = configMap.replacingOccurrences(of: "kind: ConfigMap", with: "kind: Service")
            .replacingOccurrences(
                of: "metadata: {name: bomb}", with: "metadata: {name: bomb}\nspec: {clusterIP: 198.18.100.5, ports: [{port: 80}]}")
        let start = Date()
        let skipped = try bed.svcnat(n, ["apply", "--dry-run", "-f", try bed.writeManifest(configMap)])
        #expect(skipped.code == 0 && skipped.err.contains("skipped 1 object of 1 kind not used by svcnat; -v lists them"), "\(skipped.err)")
        let refused = try bed.svcnat(n, ["apply", "--dry-run", "-f", try bed.writeManifest(service)])
        #expect(
            refused.code == 2 && refused.err.contains("expands (through YAML aliases) to more than 4 times its own size"), "\(refused.err)")
        #expect(Date().timeIntervalSince(start) < 10)
    }

    /// `cp a.yaml b.yaml; rm a.yaml` deleted the Service: b.yaml was rejected as "defined twice"
    /// and never checked again. Now it takes over when a.yaml goes.
    @Test func aCopyRejectedAsADuplicateTakesOverWhenTheOriginalGoes() throws {
        let bed = Testbed("dup")
        defer { bed.close() }
        let (n, dir, daemon) = try webDaemon(bed, pods: [1, 2])
        let good = ruleset(bed, n)
        try FileManager.default.copyItem(atPath: dir + "/web.yaml", toPath: dir + "/copy.yaml")
        #expect(try within(3) { try http(bed, n, "http://127.0.0.1:10256/healthz").1.contains("defined twice") } != nil)
        try FileManager.default.removeItem(atPath: dir + "/web.yaml")
        #expect(try within(3) { !(try http(bed, n, "http://127.0.0.1:10256/healthz").1.contains("defined twice")) } != nil)
        usleep(500_000)
        #expect(ruleset(bed, n) == good, "\(daemon.log())")
    }

    /// Replacing the folder by rename lost the watch. Now the parent folder is watched too.
    @Test func aFolderReplacedByRenameIsFollowed() throws {
        let bed = Testbed("mvdir")
        defer { bed.close() }
        let (n, dir, daemon) = try webDaemon(bed, pods: [1])
        let next = dir + ".next"
        try FileManager.default.createDirectory(atPath: next, withIntermediateDirectories: true)
        try write(next + "/web.yaml", serviceManifest(name: "web", pods: [3]))
        try FileManager.default.moveItem(atPath: dir, toPath: dir + ".old")
        try FileManager.default.moveItem(atPath: next, toPath: dir)
        defer { try? FileManager.default.removeItem(atPath: dir + ".old") }
        #expect(
            within(3) {
                let r = ruleset(bed, n); return r.contains("198.19.3.2") && !r.contains("198.19.1.2")
            } != nil, "\(daemon.log())")
        // And the new folder's own changes are followed.
        try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [4]))
        #expect(within(3) { ruleset(bed, n).contains("198.19.4.2") } != nil, "\(daemon.log())")
    }

    /// After a stall, an inotify queue overflow lost most changes (4,468 of 10,000 reached the
    /// kernel). Now the overflow makes the daemon read the whole folder again. The daemon is
    /// stopped while 9,000 files are written (18,000 events, over the default 16,384 queue).
    @Test func lostInotifyEventsLeadToAFullReread() throws {
        let bed = Testbed("qovf")
        defer { bed.close() }
        let (n, dir, daemon) = try webDaemon(bed, pods: [1])
        daemon.signal(SIGSTOP)
        let count = 9000
        for i in 0..<count { try Self.numbered(i).write(toFile: dir + "/s\(i).yaml", atomically: false, encoding: .utf8) }
        daemon.signal(SIGCONT)
        let done = within(60) {
            let out = (try? bed.sh(n, ["nft", "list", "map", "ip", "svcnat", "no-endpoint-services"])) ?? ""
            return out.components(separatedBy: "comment \"many/s").count - 1 == count
        }
        #expect(done != nil, "\(daemon.log().suffix(2000))")
        #expect(daemon.log().contains("inotify queue overflowed"))
    }

    /// SIGHUP reads the folder again (and syncs in full).
    @Test func sighupRereadsTheFolder() throws {
        let bed = Testbed("hup")
        defer { bed.close() }
        let (n, _, daemon) = try webDaemon(bed, pods: [1])
        daemon.signal(SIGHUP)
        #expect(within(3) { daemon.log().contains("reading") && daemon.log().contains("again: SIGHUP") } != nil, "\(daemon.log())")
        #expect(within(3) { daemon.log().contains("sync (full, SIGHUP)") } != nil, "\(daemon.log())")
        #expect(ruleset(bed, n).contains("198.19.1.2"))
    }

    /// The retry backoff was bypassed: the 500 ms drift check asked for a full sync at once, so
    /// a failing sync was retried about every --min-sync-period, capped at 16 s. From the log:
    /// 0.5 s doubling, and no more attempts than that allows.
    @Test func theRetryBackoffHoldsAgainstTheDriftCheck() throws {
        let bed = Testbed("backoff")
        defer { bed.close() }
        let n = try bed.addNamespace("node")
        let dir = try bed.makeDirectory()
        try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1]))
        let start = Date()
        let daemon = try bed.startProcessWithEnv(
            n, [svcnatPath, "run", "--manifests", dir, "--min-sync-period", "0"], env: ["SVCNAT_TEST_REFUSE_BATCHES": "1"])
        sleep(9)
        let elapsed = Date().timeIntervalSince(start)
        let delays = daemon.log().split(separator: "\n").compactMap { line -> Double? in
            guard let r = line.range(of: "retrying in ") else { return nil }
            return Double(line[r.upperBound...].prefix { $0 != " " })
        }
        #expect(Array(delays.prefix(4)) == [0.5, 1, 2, 4], "\(delays)")
        // 0.5 + 1 + 2 + 4 = 7.5 s: in 9 s at most 5 failed syncs (the drift check adds none).
        #expect(delays.count <= 5, "\(delays.count) failed syncs in \(elapsed) s: \(delays)")
    }
}
