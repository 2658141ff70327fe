import NFNetlink
import SvcnatHost
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
