import ArgumentParser
import Foundation
import SvcnatCore
import SvcnatModel

extension Svcnat {
    struct Apply: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Program the Services of the manifests into the kernel (or print the rules with --dry-run).")

        @Option(name: .shortAndLong, help: "A manifest file, a folder (read recursively: *.yaml, *.yml, *.json) or - for standard input. Repeatable.")
        var filename: [String] = []

        @Flag(help: "Touch nothing; print the complete ruleset svcnat would own.")
        var dryRun = false

        @Option(help: "With --dry-run: nft (loadable with nft -f), iptables (kube-proxy's iptables mode, iptables-save format) or json.")
        var format: OutputFormat = .nft

        @OptionGroup var options: CommonOptions

        func validate() throws {
            if filename.isEmpty { throw ValidationError("give at least one -f PATH") }
            if format != .nft && !dryRun { throw ValidationError("--format applies to --dry-run") }
        }

        func run() throws {
            let state = try load(filename)
            let config = options.config
            if dryRun {
                let (proxy, ruleset) = try Reconciler.desired(state, config: config)
                switch format {
                case .nft: print(ruleset.nftText, terminator: "")
                case .iptables: print(IptablesRenderer(config.translator).render(proxy), terminator: "")
                case .json: print(JSON.object([("ruleset", ruleset.json), ("services", .array(ruleset.serviceViews.map(\.json)))]).text())
                }
                return
            }
            let kernel = try NetlinkKernel()
            let result = try Reconciler(config: config, kernel: kernel).reconcile(state)
            if options.verbose { print(result.transaction.nftText, terminator: "") }
            if let w = result.flowWarning { FileHandle.standardError.write("svcnat: warning: \(w)\n") }
            print(result.summary)
        }
    }
}
