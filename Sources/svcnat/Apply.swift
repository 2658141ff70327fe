import ArgumentParser
import Foundation
import SvcnatCore
import NFTModel
import SvcnatModel
import SvcnatExplain
import SvcnatHost

extension Svcnat {
    struct Apply: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Program the Services of the manifests into the kernel (or print the rules with --dry-run).")

        @Option(
            name: .shortAndLong,
            help: "A manifest file, a folder (read recursively: *.yaml, *.yml, *.json) or - for standard input. Repeatable.")
        var filename: [String] = []

        @Flag(help: "Touch nothing; print the complete ruleset svcnat would own.")
        var dryRun = false

        @Option(
            help:
                ArgumentHelp(
                    "With --dry-run: nft (loadable with nft -f; both tables), iptables or ip6tables (kube-proxy's iptables mode for "
                        + "IPv4 or IPv6, in iptables-save form) or json.")
        )
        var format: OutputFormat = .nft

        @Flag(
            help: ArgumentHelp(
                "Apply input that holds no manifest (an empty folder, no *.yaml/*.yml/*.json file, empty standard input), "
                    + "which removes every Service; refused without it."))
        var allowEmpty = false

        @OptionGroup var options: CommonOptions

        func validate() throws {
            if filename.isEmpty { throw ValidationError("give at least one -f PATH") }
            if format != .nft && !dryRun { throw ValidationError("--format applies to --dry-run") }
        }

        /// kube-proxy's iptables mode drops INVALID packets unless the node's
        /// nf_conntrack_tcp_be_liberal is set; the rendering decides the same way.
        var dropsInvalid: Bool { !(options.conntrackTcpBeLiberal || TCPBeLiberal.isSet()) }

        func run() throws {
            let clock = ContinuousClock()
            let started = clock.now
            // Only the state is kept: the objects as read (and their origins) are let go here.
            let (holdsManifests, state) = try {
                let (input, state) = try load(filename, options)
                return (input.holdsManifests, state)
            }()
            let read = clock.now - started
            if !holdsManifests && !allowEmpty {
                var now: Int?
                if !dryRun, let tables = try? NetlinkKernel().readTables(options.table) {
                    now = Set(tables.flatMap { $0.serviceViews.map { $0.name.split(separator: ":").first ?? "" } }).count
                }
                throw NothingToApply(paths: filename, servicesNow: now)
            }
            let config = options.config
            if dryRun {
                let (tables, conflicts) = try Reconciler.desiredTablesAndConflicts(consume state, config: config)
                warn(conflicts)
                switch format {
                case .nft: for t in tables { t.ruleset.writeNft { FileHandle.standardOutput.write(Data($0)) } }
                case .iptables:
                    print(IptablesRenderer(config.translator, dropsInvalid: dropsInvalid).render(tables[0].proxy), terminator: "")
                    if let v6 = tables.first(where: { $0.family == .v6 }), !v6.proxy.servicePorts.isEmpty {
                        FileHandle.standardError.write(
                            "svcnat: IPv6 Services are not in this output (iptables-restore loads IPv4); --format ip6tables prints them\n")
                    }
                case .ip6tables:
                    let proxy = tables.first { $0.family == .v6 }?.proxy ?? ProxyState(servicePorts: [])
                    print(IptablesRenderer(config.translator(for: .v6), dropsInvalid: dropsInvalid).render(proxy), terminator: "")
                case .json: print(tables.map(\.ruleset).json.text())
                }
                Self.finish()
            }
            if options.conntrackTcpBeLiberal {
                do { try TCPBeLiberal.set() } catch {
                    FileHandle.standardError.write("svcnat: warning: --conntrack-tcp-be-liberal: \(error)\n")
                }
            }
            let kernel = try NetlinkKernel()
            let result = try Reconciler(config: config, kernel: kernel).reconcile(state)
            if options.verbose { print(result.transactions.nftText, terminator: "") }
            if let w = result.flowWarning { FileHandle.standardError.write("svcnat: warning: \(w)\n") }
            warn(result.conflicts)
            let readMS = Double(read.components.seconds) * 1000 + Double(read.components.attoseconds) / 1e15
            print(result.summary + "; manifests read in \(String(format: "%.1f", readMS)) ms")
            // The rest is programmed; the Services the kernel refused make the exit 1.
            for (key, why) in result.refused.sorted(by: { $0.key < $1.key }) {
                FileHandle.standardError.write("svcnat: error: Service \(key) was left out: \(why)\n")
            }
            if !result.refused.isEmpty { throw ExitCode(1) }
            Self.finish()
        }

        /// Ends the process once everything is written: the state of 10,000 Services is not
        /// freed object by object on the way out (tens of milliseconds), the kernel frees it.
        static func finish() -> Never {
            Foundation.exit(0)
        }
    }
}
