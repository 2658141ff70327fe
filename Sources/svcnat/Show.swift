import ArgumentParser
import Foundation
import SvcnatCore
import NFTModel
import SvcnatModel

extension Svcnat {
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print what svcnat owns in the kernel, read back over netlink: services, frontends, endpoints, and the rules.")

        @Option(help: "nft (services as comments, then the table in nft syntax) or json.")
        var format: ViewFormat = .nft

        @OptionGroup var options: TableOptions
        @OptionGroup var unlisted: UnlistedRuleFlags

        func run() throws {
            let kernel = try NetlinkKernel()
            let tables = try kernel.readTables(options.table)
            if format == .json {
                print(tables.json.text())
                return
            }
            if tables.isEmpty { print("# svcnat: no table ip or ip6 \(options.table) in this network namespace") }
            if let flags = rememberedFlags(tables) { print("# applied with: \(flags.words.joined(separator: " "))") }
            for ruleset in tables {
                for v in ruleset.serviceViews { print(v.text.split(separator: "\n").map { "# " + $0 }.joined(separator: "\n")) }
                print(ruleset.nftText, terminator: "")
            }
        }
    }
}
