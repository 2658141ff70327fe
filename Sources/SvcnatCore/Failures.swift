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
