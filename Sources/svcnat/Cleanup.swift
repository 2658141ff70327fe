import ArgumentParser
import SvcnatCore

extension Svcnat {
    struct Cleanup: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove svcnat's table and nothing else.")

        @OptionGroup var options: CommonOptions

        func run() throws {
            let kernel = try NetlinkKernel()
            let removed = try Reconciler(config: options.config, kernel: kernel).cleanup()
            print(removed ? "svcnat: removed table ip \(options.table)" : "svcnat: no table ip \(options.table); nothing to remove")
        }
    }
}
