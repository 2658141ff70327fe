// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "svcnat",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "svcnat", targets: ["svcnat"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        // libnftnl + libmnl, as Debian ships them. libnftnl.pc does not name libmnl, so the
        // module map links it explicitly.
        .systemLibrary(
            name: "CNftables",
            pkgConfig: "libnftnl",
            providers: [.apt(["libnftnl-dev", "libmnl-dev"])]
        ),
        // Plain values and pure functions: Kubernetes objects, proxy state, rulesets, plans,
        // renderers. No I/O, no pointers.
        .target(name: "SvcnatModel"),
        // The only module that touches libnftnl/libmnl and raw memory.
        .target(name: "NFNetlink", dependencies: ["SvcnatModel", "CNftables"]),
        // Manifest files (YAML/JSON) into model values.
        .target(name: "SvcnatSources", dependencies: ["SvcnatModel", "Yams"]),
        // Reconciler behind the Kernel protocol.
        .target(name: "SvcnatCore", dependencies: ["SvcnatModel", "SvcnatSources", "NFNetlink"]),
        .executableTarget(
            name: "svcnat",
            dependencies: ["SvcnatCore", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .testTarget(
            name: "SvcnatModelTests",
            dependencies: ["SvcnatModel", "SvcnatSources", "SvcnatCore"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "KernelTests",
            dependencies: ["svcnat", "SvcnatModel"],
            resources: [.copy("Helpers")]
        ),
    ]
)
