import ArgumentParser
import Foundation
import SvcnatCore

extension Svcnat {
    struct Cleanup: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove svcnat's tables (ip and ip6) and nothing else; with --kube-proxy, what kube-proxy left instead.",
            discussion: """
                --kube-proxy removes, after kube-proxy has stopped, what it leaves in the ruleset: the tables \
                ip and ip6 kube-proxy (nftables mode) and, in the iptables nat, filter and mangle tables, the \
                KUBE-* chains and the rules of other chains that jump to them (iptables mode), over netlink for \
                iptables-nft and through iptables-legacy-restore for iptables-legacy. Other agents' rules and \
                svcnat's own tables stay.
                """)

        @OptionGroup var options: TableOptions
        @OptionGroup var unlisted: UnlistedRuleFlags
        @Flag(name: .customLong("kube-proxy"), help: "Remove what a stopped kube-proxy left (nftables and iptables), not svcnat's tables.")
        var kubeProxy = false

        func run() throws {
            let kernel = try NetlinkKernel()
            let reconciler = Reconciler(config: ProxyConfig(table: options.table), kernel: kernel)
            guard kubeProxy else {
                let removed = try reconciler.cleanup()
                print(
                    removed.isEmpty
                        ? "svcnat: no table ip or ip6 \(options.table); nothing to remove"
                        : "svcnat: removed " + removed.map { "table \($0.rawValue) \(options.table)" }.joined(separator: " and "))
                return
            }
            var removed = try reconciler.cleanupKubeProxy()
            for family in ["iptables", "ip6tables"] { removed += try LegacyIptables(family).removeKubeProxy() }
            if removed.isEmpty {
                print("svcnat: nothing of kube-proxy's is left (no table kube-proxy, no KUBE-* chain)")
            } else {
                print("svcnat: removed what kube-proxy left (\(removed.count) objects):")
                for line in removed { print("  \(line)") }
            }
        }
    }
}

/// iptables-legacy's tables live in x_tables, out of nftables' reach: they are read with
/// `iptables-legacy-save` and changed with `iptables-legacy-restore --noflush`. Absent tools,
/// or no legacy table loaded, mean nothing to do.
struct LegacyIptables {
    /// iptables or ip6tables.
    let family: String
    var save: String { "\(family)-legacy-save" }
    var restore: String { "\(family)-legacy-restore" }

    init(_ family: String) { self.family = family }

    static func find(_ tool: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        return (path.split(separator: ":") + ["/usr/sbin", "/sbin"]).map { "\($0)/\(tool)" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    func removeKubeProxy() throws -> [String] {
        guard let saveTool = Self.find(save), let restoreTool = Self.find(restore) else { return [] }
        let dump = try Self.run(saveTool, [], input: nil)
        guard dump.status == 0 else { return [] }  // no legacy tables in this kernel
        guard let (script, removed) = KubeProxyLeftovers.legacyRestore(save: dump.output) else { return [] }
        let r = try Self.run(restoreTool, ["--noflush"], input: script)
        guard r.status == 0 else {
            throw LegacyRestoreFailed(description: "\(restore) --noflush refused the removal of kube-proxy's chains: \(r.error)")
        }
        return removed.map { "\(family)-legacy: \($0)" }
    }

    static func run(_ tool: String, _ args: [String], input: String?) throws -> (status: Int32, output: String, error: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        // Standard error goes to a file, so a tool that writes much there cannot block while
        // its standard output is read.
        let errPath = NSTemporaryDirectory() + "svcnat-\(getpid())-\(UUID().uuidString).err"
        guard FileManager.default.createFile(atPath: errPath, contents: nil), let errFile = FileHandle(forWritingAtPath: errPath) else {
            throw LegacyRestoreFailed(description: "cannot create \(errPath) for \(tool)'s errors")
        }
        defer { try? FileManager.default.removeItem(atPath: errPath) }
        let out = Pipe(), inp = Pipe()
        p.standardOutput = out
        p.standardError = errFile
        p.standardInput = inp
        try p.run()
        if let input { inp.fileHandleForWriting.write(Data(input.utf8)) }
        try inp.fileHandleForWriting.close()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        try? errFile.close()
        let e = FileManager.default.contents(atPath: errPath) ?? Data()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }
}

struct LegacyRestoreFailed: CommandFailure {
    var description: String
    var exitCode: Int32 { 1 }
}
