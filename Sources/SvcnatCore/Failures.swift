import NFNetlink
import SvcnatHost
import SvcnatModel
import SvcnatSources

/// An error that carries its exit code under the command-line contract: 1 for a runtime
/// failure (the kernel refused, no permission), 2 for invalid input or usage.
public protocol CommandFailure: Error, CustomStringConvertible {
    var exitCode: Int32 { get }
}

extension InputError: CommandFailure { public var exitCode: Int32 { 2 } }
extension InputErrors: CommandFailure { public var exitCode: Int32 { 2 } }
extension NetlinkError: CommandFailure { public var exitCode: Int32 { 1 } }
extension BatchError: CommandFailure { public var exitCode: Int32 { 1 } }
extension HostError: CommandFailure { public var exitCode: Int32 { 1 } }

/// `--table` names a table that svcnat did not make: svcnat changes and removes only tables
/// that carry its marker (`Names.tableComment`), so `--table filter` cannot take over
/// iptables-nft's table.
public struct ForeignTable: CommandFailure {
    public var family: String
    public var table: String
    public var exitCode: Int32 { 2 }
    public var description: String {
        "table \(family) \(table) exists and is not svcnat's (it lacks the comment \"\(Names.tableComment)\"); "
            + "svcnat leaves it alone: choose another --table"
    }
}

/// `apply` of input that holds no manifest at all (an empty folder, only other files, empty
/// standard input): applying it would remove every Service, which is refused unless asked for.
public struct NothingToApply: CommandFailure {
    public var paths: [String]
    /// Services svcnat's tables hold now, when the kernel was read (not in a dry run).
    public var servicesNow: Int?
    public var exitCode: Int32 { 2 }
    public init(paths: [String], servicesNow: Int?) {
        self.paths = paths
        self.servicesNow = servicesNow
    }
    public var description: String {
        let inputs = paths.map { $0 == "-" ? "standard input" : $0 }.joined(separator: ", ")
        let now =
            servicesNow.map { "svcnat's tables hold \($0) Services now, and applying nothing would remove them all" }
            ?? "applying nothing would remove every Service svcnat programs"
        return
            "no manifest in \(inputs) (no *.yaml, *.yml or *.json file, or empty standard input); \(now). "
            + "Give --allow-empty to mean that, or use svcnat cleanup to remove svcnat's tables"
    }
}
