import ArgumentParser
import Foundation
import SvcnatCore
import SvcnatModel

extension Svcnat {
    struct Diff: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the transaction apply would send, as an nft script.",
            discussion: "Exits like diff(1): 0 nothing to change, 1 changes pending, 2 trouble.")

        @Option(name: .shortAndLong, help: "A manifest file, a folder or - for standard input. Repeatable.")
        var filename: [String] = []

        @OptionGroup var options: CommonOptions

        func validate() throws {
            if filename.isEmpty { throw ValidationError("give at least one -f PATH") }
        }

        func run() throws {
            do {
                let state = try load(filename, options).state
                let kernel = try NetlinkKernel()
                // Flags not given are the table's own, so a diff without them is not a rewrite.
                let (config, notes) = options.config(remembered: rememberedFlags(try kernel.readTables(options.table)))
                for n in notes { FileHandle.standardError.write("svcnat: note: \(n)\n") }
                let result = try Reconciler(config: config, kernel: kernel).reconcile(state, dryRun: true)
                warn(result.conflicts)
                print(result.transactions.nftText, terminator: "")
                if !result.transactions.isEmpty { throw ExitCode(1) }
            } catch let e as ExitCode {
                throw e
            } catch {
                // diff(1): trouble is 2, whatever kind of trouble.
                FileHandle.standardError.write("svcnat: error: \(error)\n")
                throw ExitCode(2)
            }
        }
    }
}
