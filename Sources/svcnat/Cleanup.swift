import ArgumentParser
import SvcnatCore

extension Svcnat {
    struct Cleanup: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove svcnat's tables (ip and ip6) and nothing else.")

        @OptionGroup var options: TableOptions
        @OptionGroup var unlisted: UnlistedRuleFlags

        func run() throws {
            let kernel = try NetlinkKernel()
            let removed = try Reconciler(config: ProxyConfig(table: options.table), kernel: kernel).cleanup()
            print(
                removed.isEmpty
                    ? "svcnat: no table ip or ip6 \(options.table); nothing to remove"
                    : "svcnat: removed " + removed.map { "table \($0.rawValue) \(options.table)" }.joined(separator: " and "))
        }
    }
}
