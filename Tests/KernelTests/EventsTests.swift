import Foundation
import Testing

extension RootTests.DaemonTests {
    /// Another agent committing 10 times a second to its own table made every sync full
    /// ("ruleset generation changed"): the daemon now reads the kernel's change events and
    /// ignores commits that leave its tables alone.
    @Test func commitsToAnotherTableLeaveSyncsPartial() throws {
        let bed = Testbed("evother")
        defer { bed.close() }
        let (n, dir, daemon) = try webDaemon(bed, pods: [1, 2], ["--min-sync-period", "0"])
        try bed.sh(n, ["nft", "add table ip other; add set ip other s { type ipv4_addr; }"])
        // 40 commits, 0.1 s apart.
        let writer = try bed.startProcess(
            n, ["sh", "-c", "for i in $(seq 1 40); do nft add element ip other s \"{ 198.18.9.$i }\" || exit 1; sleep 0.1; done"])
        usleep(1_000_000)
        try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1]))
        #expect(within(3) { !ruleset(bed, n).contains("198.19.2.2") } != nil, "\(daemon.log())")
        #expect(writer.waitExit(seconds: 15) == 0, "\(writer.log())")
        usleep(700_000)
        let log = daemon.log()
        #expect(log.contains("sync (partial, manifests changed: web.yaml)"), "\(log)")
        #expect(log.components(separatedBy: "sync (full").count - 1 == 1, "only the first sync is full: \(log)")
        #expect(!log.contains("drift"), "\(log)")
        // The full sync says where its time went; a partial one does not.
        let full = log.split(separator: "\n").first { $0.contains("sync (full, start)") } ?? ""
        #expect(
            full.range(
                of: #" ms \(state [0-9.]+, translate [0-9.]+, read [0-9.]+, plan [0-9.]+, send [0-9.]+, .*cache [0-9.]+\)$"#,
                options: .regularExpression) != nil, "\(full)")
        #expect(!log.split(separator: "\n").contains { $0.contains("sync (partial") && $0.contains("(state ") }, "\(log)")
    }

    /// Another writer's change to svcnat's table wakes the daemon through its event (the
    /// periodic check is 10 s when events work), and the log names the writer.
    @Test func aChangeToSvcnatsTableIsRepairedAtItsEventAndNamesTheWriter() throws {
        let bed = Testbed("evown")
        defer { bed.close() }
        let (n, _, daemon) = try webDaemon(bed, pods: [1, 2])
        let good = ruleset(bed, n)
        try bed.sh(n, ["nft", "delete", "element", "ip", "svcnat", "service-ips", "{ 198.18.100.20 . tcp . 80 }"])
        let took = within(2) { ruleset(bed, n) == good }
        #expect(took != nil && took! < 1, "repaired after \(String(describing: took)) s: \(daemon.log())")
        #expect(daemon.log().contains("drift: nft (pid "), "\(daemon.log())")
    }
}

extension RootTests.KernelTests {
    func nftJSON(_ bed: Testbed, _ n: String) throws -> String { try bed.sh(n, ["nft", "-j", "list", "table", "ip", "svcnat"]) }

    /// `apply` planned from a read that another writer changed before the batch went, exited 0
    /// and left the other writer's change in svcnat's table. The batch now carries the
    /// generation it was planned from: the kernel refuses it, and svcnat reads and plans again.
    /// Oracle: nft's own dump, which a second apply must leave as it is.
    @Test func applyIsACompareAndSwapOnTheGenerationItRead() throws {
        let bed = Testbed("cas")
        defer { bed.close() }
        let n = try bed.addNamespace("node")
        let first = try bed.writeManifest(serviceManifest(name: "web", pods: [1, 2]))
        #expect(try bed.svcnat(n, ["apply", "-f", first]).code == 0)
        let second = try bed.writeManifest(serviceManifest(name: "web", pods: [1, 3]))
        let intruder = "nft add rule ip svcnat services counter comment intruder"
        let r = try bed.svcnat(n, ["apply", "-f", second], env: ["SVCNAT_TEST_BEFORE_FIRST_BATCH": intruder])
        #expect(r.code == 0, "\(r.err)")
        let after = try nftJSON(bed, n)
        #expect(after.contains("198.19.3.2") && !after.contains("198.19.2.2"))
        #expect(!after.contains("intruder"), "the other writer's rule was planned around, not over: \(after)")
        #expect(try bed.svcnat(n, ["apply", "-f", second]).code == 0)
        #expect(try nftJSON(bed, n) == after, "a second apply found something left to repair")
    }

    /// Scaling down commits in two batches: the first moves the rules to the new endpoint
    /// count, the second removes the endpoint-map keys only the old rules could draw. Between
    /// the two (seen with nft, from a hook that runs before batch 2 is sent), every key the
    /// old `numgen mod 3` can draw must still resolve.
    @Test func betweenBatchOneAndTwoEveryKeyTheOldRulesDrawResolves() throws {
        let bed = Testbed("batches")
        defer { bed.close() }
        let n = try bed.addNamespace("node")
        #expect(try bed.svcnat(n, ["apply", "-f", try bed.writeManifest(serviceManifest(name: "web", pods: [1, 2, 3]))]).code == 0)
        let snapshot = try bed.makeDirectory() + "/between.json"
        let r = try bed.svcnat(
            n, ["apply", "-f", try bed.writeManifest(serviceManifest(name: "web", pods: [1, 2]))],
            env: ["SVCNAT_TEST_BEFORE_LATER_BATCHES": "nft -j list table ip svcnat > \(snapshot)"])
        #expect(r.code == 0, "\(r.err)")
        let between = try Data(contentsOf: URL(fileURLWithPath: snapshot))
        #expect(try endpointKeys(between) == [0, 1, 2], "between the batches")
        #expect(try endpointKeys(Data(nftJSON(bed, n).utf8)) == [0, 1], "after both")
        #expect(try nftJSON(bed, n).contains("\"mod\": 2"), "the rules draw from two")
    }

    /// The keys of the endpoint maps in an `nft -j` dump of svcnat's table.
    func endpointKeys(_ json: Data) throws -> Set<Int> {
        let root = try JSONSerialization.jsonObject(with: json) as? [String: Any]
        var keys = Set<Int>()
        for item in root?["nftables"] as? [[String: Any]] ?? [] {
            guard let map = item["map"] as? [String: Any], (map["name"] as? String)?.hasPrefix("endpoints-") == true else { continue }
            for e in map["elem"] as? [[Any]] ?? [] { if let k = e.first as? Int { keys.insert(k) } }
        }
        return keys
    }
}
