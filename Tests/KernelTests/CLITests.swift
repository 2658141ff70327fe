import Foundation
import Testing

/// The built binary, run anywhere: help, the example's dry run pinned byte for byte, exit codes.
/// As root each run gets a network namespace of its own (`unshare --net`), so not even a dry
/// run touches the machine's own.
@Suite struct CLITier {
    func svcnat(_ args: [String], stdin: String? = nil) throws -> CommandResult {
        try run((isRoot ? ["unshare", "--net", "--", svcnatPath] : [svcnatPath]) + args, stdin: stdin)
    }

    @Test func helpListsEverySubcommand() throws {
        let r = try svcnat(["--help"])
        #expect(r.code == 0)
        for sub in ["apply", "diff", "show", "cleanup", "run", "explain"] { #expect(r.out.contains("  \(sub)"), "\(sub) in \(r.out)") }
        #expect(r.out.contains("Exit codes: 0 success, 1 runtime failure"))
    }

    /// The example's dry run is the nft text the golden netlink test feeds to nft: pinned here.
    @Test func exampleDryRunIsUnchanged() throws {
        let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("NFNetlinkTests/Fixtures/example.nft").path
        let r = try svcnat(["apply", "-f", examples, "--dry-run", "--cluster-cidr", "198.19.0.0/16"])
        #expect(r.code == 0, "\(r.err)")
        #expect(r.out == (try String(contentsOfFile: golden, encoding: .utf8)))
    }

    @Test func badInputExitsTwoNamingObjectAndField() throws {
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 198.18.100.1, ports: [{port: 70000}]}\n"
        let r = try svcnat(["apply", "-f", "-", "--dry-run"], stdin: bad)
        #expect(r.code == 2)
        #expect(r.err.contains("Service default/web: spec.ports[0].port"), "\(r.err)")
        #expect(r.out.isEmpty)
    }

    @Test func usageErrorsExitTwo() throws {
        #expect(try svcnat(["apply"]).code == 2)
        #expect(try svcnat(["apply", "-f", examples, "--format", "iptables"]).code == 2)
        #expect(try svcnat(["nonsense"]).code == 2)
        #expect(try svcnat(["run", "--min-sync-period", "soon"]).code == 2)
    }

    /// `--sync-period 3000000h` crashed the daemon with SIGILL (the timer's arithmetic
    /// overflowed). Durations are bounded at a week and refused above it, with exit 2.
    @Test func durationsAboveAWeekExitTwo() throws {
        for flag in ["--sync-period", "--min-sync-period"] {
            for value in ["3000000h", "169h", "1e300h"] {
                let r = try svcnat(["run", "--manifests", examples, flag, value])
                #expect(r.code == 2 && r.err.contains(flag), "\(flag) \(value): \(r.code) \(r.err)")
            }
        }
    }

    /// Says what a non-root run leaves out, so a green run without root is read for what it is.
    @Test func kernelTierIsCountedWhenSkipped() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".swift") && $0 != "CLITests.swift" }
        let count = try files.reduce(0) { n, f in
            n + (try String(contentsOfFile: dir + "/" + f, encoding: .utf8)).components(separatedBy: "@Test").count - 1
        }
        #expect(count > 20)
        print(isRoot ? "kernel tier: \(count) tests run as root" : "kernel tier: \(count) tests skipped (\(rootOnly))")
    }
}
