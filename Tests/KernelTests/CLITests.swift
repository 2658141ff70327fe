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

    @Test func kubeProxysSpellingsAreTakenOnTheCommandLine() throws {
        let version = try svcnat(["--version"])
        #expect(version.code == 0 && version.out.hasPrefix("svcnat "), "\(version.out)\(version.err)")
        let mode = try svcnat(["run", "--proxy-mode", "ipvs"])
        #expect(mode.code == 2 && mode.err.contains("--proxy-mode ipvs: svcnat programs nftables only"), "\(mode.err)")
        let dry = try svcnat(["apply", "-f", examples, "--dry-run", "--cluster-cidr=198.19.0.0/16,2001:db8:1::/48", "--v=2"])
        let repeated = try svcnat([
            "apply", "-f", examples, "--dry-run", "--cluster-cidr", "198.19.0.0/16", "--cluster-cidr", "2001:db8:1::/48"
        ])
        #expect(dry.code == 0 && dry.out == repeated.out, "\(dry.err)")
    }

    /// A loopback CIDR in --nodeport-addresses is named and left out, as kube-proxy with
    /// localhost node ports off leaves it (its TestNodePorts); one of nothing else is refused.
    @Test func loopbackNodePortAddressesAreLeftOut() throws {
        let mixed = try svcnat([
            "apply", "-f", examples, "--dry-run", "--nodeport-addresses", "127.0.0.1/32", "--nodeport-addresses", "198.18.0.0/24"
        ])
        let plain = try svcnat(["apply", "-f", examples, "--dry-run", "--nodeport-addresses", "198.18.0.0/24"])
        #expect(mixed.code == 0 && mixed.out == plain.out, "\(mixed.err)")
        #expect(mixed.err.contains("--nodeport-addresses 127.0.0.1/32 left out"), "\(mixed.err)")
        let only = try svcnat(["apply", "-f", examples, "--dry-run", "--nodeport-addresses", "::1/128"])
        #expect(only.code == 2 && only.err.contains("never served on loopback"), "\(only.err)")
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

/// Manifests mode as a user meets it on the command line: the warnings, the allocation, the
/// help of each subcommand, each with its exact words and exit code.
@Suite struct ManifestsModeCLI {
    let plain = URL(fileURLWithPath: examples).deletingLastPathComponent().appendingPathComponent("examples-plain").path
    func svcnat(_ args: [String], stdin: String? = nil) throws -> CommandResult {
        try run((isRoot ? ["unshare", "--net", "--", svcnatPath] : [svcnatPath]) + args, stdin: stdin)
    }

    @Test func plainManifestsSayWhyTheyProgramNothingWithoutAllocate() throws {
        let r = try svcnat(["apply", "-f", plain, "--dry-run", "--cluster-cidr", "198.19.0.0/16"])
        #expect(r.code == 0, "\(r.err)")
        let lines = r.err.split(separator: "\n").map(String.init)
        #expect(
            lines == [
                "svcnat: warning: \(plain)/app.yaml: Service shop/web: spec.clusterIP is not set (the API server allocates it; give "
                    + "it, or --allocate with --service-cidr); the Service gets no rules",
                "svcnat: warning: \(plain)/app.yaml: Service shop/web-public: spec.clusterIP is not set (the API server allocates it; "
                    + "give it, or --allocate with --service-cidr); the Service gets no rules",
                "svcnat: skipped 3 objects of 3 kinds not used by svcnat; -v lists them"
            ])
        let v = try svcnat(["apply", "-f", plain, "--dry-run", "-v"])
        #expect(
            v.err.contains("svcnat: \(plain)/app.yaml: Deployment shop/web: kind Deployment is not used by svcnat; skipped"), "\(v.err)")
        #expect(!r.out.contains("198.18.100."))
    }

    @Test func allocationIsTheSameOnEveryRunAndSaysWhatItGave() throws {
        let args = ["apply", "-f", plain, "--dry-run", "--allocate", "--service-cidr", "198.18.100.0/24", "--cluster-cidr", "198.19.0.0/16"]
        let a = try svcnat(args), b = try svcnat(args)
        #expect(a.code == 0 && b.code == 0, "\(a.err)")
        #expect(a.out == b.out && a.err == b.err)
        let allocated = a.err.split(separator: "\n").filter { $0.hasSuffix(" allocated") }
        #expect(allocated.count == 3, "\(a.err)")
        for line in allocated {
            let words = line.split(separator: " ")
            let value = String(words[words.count - 2])
            // Each allocation is in the rules, marked as allocated.
            #expect(a.out.contains(value.contains(".") ? "\(value) . tcp . 80 comment" : "tcp . \(value) comment"), "\(line)")
        }
        #expect(a.out.contains("comment \"shop/web:http (allocated)\""))
        let refused = try svcnat(["apply", "-f", plain, "--dry-run", "--allocate"])
        #expect(refused.code == 2 && refused.err.contains("--allocate needs --service-cidr: the range to allocate cluster IPs from"))
        let badRange = try svcnat([
            "apply", "-f", plain, "--dry-run", "--allocate", "--service-cidr", "198.18.100.0/24", "--service-node-port-range", "5-1"
        ])
        #expect(badRange.code == 2 && badRange.err.contains("--service-node-port-range \"5-1\" is not FIRST-LAST"))
    }

    @Test func eachSubcommandListsOnlyTheFlagsAndFormatsItUses() throws {
        let show = try svcnat(["show", "--help"]), explain = try svcnat(["explain", "--help"]), cleanup = try svcnat(["cleanup", "--help"])
        for h in [show, explain, cleanup] {
            #expect(h.code == 0)
            for flag in ["--cluster-cidr", "--masquerade-all", "--endpoint-selection", "--nodeport-addresses", "--allocate"] {
                #expect(!h.out.contains(flag), "\(flag) in \(h.out)")
            }
            #expect(h.out.contains("--table"))
        }
        for h in [show, explain] { #expect(!h.out.contains("iptables") && h.out.contains("nft") && h.out.contains("json"), "\(h.out)") }
        let wrong = try svcnat(["show", "--format", "iptables"])
        #expect(wrong.code == 2 && wrong.err.contains("iptables"), "\(wrong.err)")
        // DESIGN.md's common flags are still taken there (scripts pass them), only not listed.
        let scripted = try svcnat(["cleanup", "--node-name", "n", "--cluster-cidr", "198.19.0.0/16", "-v", "--table", "svcnat"])
        #expect(scripted.code != 2, "\(scripted.err)")
        let apply = try svcnat(["apply", "--help"])
        #expect(apply.out.contains("--cluster-cidr") && apply.out.contains("--allocate") && apply.out.contains("ip6tables"))
    }

    @Test func runWithoutASourceNamesTheThree() throws {
        let r = try run((isRoot ? ["unshare", "--net", "--", svcnatPath] : [svcnatPath]) + ["run"], env: ["KUBERNETES_SERVICE_HOST": ""])
        #expect(r.code == 2)
        #expect(
            r.err.contains("--manifests DIR") && r.err.contains("--kubeconfig FILE") && r.err.contains("in-cluster service account"),
            "\(r.err)")
    }
}
