import Foundation
import Testing

extension RootTests.DaemonTests {
    /// Watches a growing log and returns, for every line containing `needle`, the time it
    /// appeared (polled every 10 ms), for at most `seconds` or until `count` lines came.
    func arrivals(_ daemon: Testbed.Background, _ needle: String, count: Int, seconds: Double) -> [Double] {
        let start = Date()
        var times: [Double] = []
        while times.count < count, Date().timeIntervalSince(start) < seconds {
            let seen = daemon.log().components(separatedBy: needle).count - 1
            while times.count < seen { times.append(Date().timeIntervalSince(start)) }
            usleep(10_000)
        }
        return times
    }

    /// The backoff read from when the failures happen, not from the numbers the log prints:
    /// 0.5, 1, 2, 4 s between failed syncs (each within 0.35 s).
    @Test func failedSyncsAreSpacedByTheBackoff() throws {
        let bed = Testbed("pace-backoff")
        defer { bed.close() }
        let n = try bed.addNamespace("node")
        let dir = try bed.makeDirectory()
        try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1]))
        let daemon = try bed.startProcessWithEnv(
            n, [svcnatPath, "run", "--manifests", dir, "--min-sync-period", "0"], env: ["SVCNAT_TEST_REFUSE_BATCHES": "1"])
        let t = arrivals(daemon, "sync failed", count: 5, seconds: 12)
        #expect(t.count == 5, "\(daemon.log())")
        let gaps = zip(t.dropFirst(), t).map { $0 - $1 }
        for (gap, want) in zip(gaps, [0.5, 1, 2, 4]) { #expect(abs(gap - want) < 0.35, "gaps \(gaps)") }
    }

    /// --min-sync-period (here 1500ms, Go duration syntax) spaces syncs however fast the files
    /// change; SIGHUP asks for a full sync, which keeps that spacing too. The times are taken
    /// as the lines appear, by a watcher that runs while the files change.
    @Test func minSyncPeriodSpacesSyncsAndSIGHUPForcesAFullOne() throws {
        let bed = Testbed("pace-min")
        defer { bed.close() }
        let n = try bed.addNamespace("node")
        let dir = try bed.makeDirectory()
        try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1]))
        let daemon = try bed.startDaemon(n, ["--manifests", dir, "--min-sync-period", "1500ms"])
        #expect(arrivals(daemon, "sync (", count: 1, seconds: 5).count == 1, "\(daemon.log())")
        // Twenty edits, 150 ms apart (3 s), then SIGHUP, from a shell in the background, while
        // this thread notes when each sync line appears: syncs at most every 1.5 s.
        let variants = try bed.makeDirectory()
        for i in 0..<3 {
            try serviceManifest(name: "web", pods: [1 + i]).write(toFile: "\(variants)/v\(i)", atomically: true, encoding: .utf8)
        }
        let script =
            "for i in $(seq 0 19); do cp \(variants)/v$((i % 3)) \(dir)/web.tmp && mv \(dir)/web.tmp \(dir)/web.yaml; sleep 0.15; done; "
            + "kill -HUP \(daemon.process.processIdentifier)"
        let editor = try bed.startProcess(n, ["sh", "-c", script])
        let times = arrivals(daemon, "sync (", count: 5, seconds: 7)
        #expect(editor.waitExit(seconds: 5) == 0)
        let log = daemon.log()
        // Edits still waiting for the spacing when SIGHUP comes ride in the same sync, so its
        // reasons may list them before SIGHUP: "sync (full, manifests changed: web.yaml; SIGHUP)".
        let fullOnSIGHUP = log.split(separator: "\n").contains { $0.contains("sync (full, ") && $0.contains("SIGHUP)") }
        #expect(fullOnSIGHUP, "\(log)")
        let gaps = zip(times.dropFirst(), times).map { $0 - $1 }
        #expect(times.count >= 3 && gaps.allSatisfy { $0 > 1.3 }, "sync lines seen at \(times) s: \(log)")
        #expect(ruleset(bed, n).contains("198.19.2.2"), "the last edit (pod 2) is in force")
    }

    /// Durations are Go's, as kube-proxy's flags: a unit is required and a bad one refused.
    @Test func durationFlagsTakeGoSyntaxAndRefuseTheRest() throws {
        let bed = Testbed("pace-flags")
        defer { bed.close() }
        let n = try bed.addNamespace("node")
        let dir = try bed.makeDirectory()
        for bad in ["1x", "5", "-1s", "200h"] {
            let r = try bed.svcnat(n, ["run", "--manifests", dir, "--min-sync-period", bad])
            #expect(r.code == 2 && r.err.contains("--min-sync-period"), "\(bad): \(r.code) \(r.err)")
        }
    }
}
