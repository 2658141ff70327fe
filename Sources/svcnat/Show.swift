import ArgumentParser
import Foundation
import SvcnatCore
import SvcnatModel

extension Svcnat {
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print what svcnat owns in the kernel, read back over netlink: services, frontends, endpoints, and the rules.")

        @Option(help: "nft (services as comments, then the table in nft syntax) or json.")
        var format: OutputFormat = .nft

        @OptionGroup var options: CommonOptions

        func validate() throws {
            if format == .iptables { throw ValidationError("show prints nft or json") }
        }

        func run() throws {
            let kernel = try NetlinkKernel()
            guard let ruleset = try kernel.read(table: options.table) else {
                if format == .json { print(JSON.object([("ruleset", .null), ("services", .array([]))]).text()) }
                else { print("# svcnat: no table ip \(options.table) in this network namespace") }
                return
            }
            let views = ruleset.serviceViews
            if format == .json {
                print(JSON.object([("ruleset", ruleset.json), ("services", .array(views.map(\.json)))]).text())
                return
            }
            for v in views { print(v.text.split(separator: "\n").map { "# " + $0 }.joined(separator: "\n")) }
            print(ruleset.nftText, terminator: "")
        }
    }
}
