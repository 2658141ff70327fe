// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "svcnat",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "svcnat", targets: ["svcnat"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0")
    ],
    targets: [
        // libnftnl + libmnl, as Debian ships them. libnftnl.pc does not name libmnl, so the
        // module map links it explicitly.
        .systemLibrary(
            name: "CNftables",
            path: "CNftables",
            pkgConfig: "libnftnl",
            providers: [.apt(["libnftnl-dev", "libmnl-dev"])]
        ),
        // Plain values and pure functions, no I/O, no pointers, in three layers:
        // nftables alone (addresses, expressions, rulesets, transactions, the planner), knowing
        // nothing of Kubernetes;
        .target(name: "NFTModel"),
        // the proxy: Kubernetes objects, proxy state, the translator into svcnat's ruleset;
        .target(name: "SvcnatModel", dependencies: ["NFTModel"]),
        // reading a ruleset back as Services: show, explain's packet walk, the iptables view.
        .target(name: "SvcnatExplain", dependencies: ["SvcnatModel"]),
        // The only module that touches libnftnl/libmnl and raw memory; it knows only nftables.
        // Debug builds (what `swift test` runs) get SVCNAT_TEST_HOOKS: a transport that makes the
        // kernel refuse batches, for the kernel tests of the built binary. Release builds have none.
        .target(
            name: "NFNetlink", dependencies: ["NFTModel", "CNftables"],
            swiftSettings: [.define("SVCNAT_TEST_HOOKS", .when(configuration: .debug))]),
        // System calls that are not netlink: inotify, the interfaces' addresses, memory.
        .systemLibrary(name: "CHost"),
        .target(name: "SvcnatHost", dependencies: ["NFTModel", "CHost"]),
        // Manifest files (YAML/JSON) into model values.
        .target(name: "SvcnatSources", dependencies: ["NFTModel", "SvcnatModel", "Yams"]),
        // Reconciler behind the Kernel protocol.
        .target(name: "SvcnatCore", dependencies: ["NFTModel", "SvcnatModel", "SvcnatExplain", "SvcnatSources", "NFNetlink", "SvcnatHost"]),
        // The Kubernetes API as a source: kubeconfig, list and watch over HTTPS.
        .target(
            name: "SvcnatKube",
            dependencies: [
                "NFTModel", "SvcnatModel", "SvcnatSources", "Yams",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio")
            ]),
        // The node agent: file watching, sync loop, metrics and health over HTTP.
        .target(
            name: "SvcnatDaemon",
            dependencies: [
                "NFTModel", "SvcnatModel", "SvcnatCore", "SvcnatHost", "SvcnatKube",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio")
            ]),
        .executableTarget(
            name: "svcnat",
            dependencies: [
                "NFTModel", "SvcnatModel", "SvcnatExplain", "SvcnatCore", "SvcnatDaemon", "SvcnatKube", "SvcnatHost",
                .product(name: "ArgumentParser", package: "swift-argument-parser")
            ]
        ),
        .testTarget(
            name: "SvcnatModelTests",
            dependencies: ["NFTModel", "SvcnatModel", "SvcnatExplain", "SvcnatSources", "SvcnatCore", "SvcnatKube", "Yams"],
            resources: [.copy("Fixtures")]
        ),
        // No root: svcnat's netlink bytes against nft's, and NFTables over a recording transport.
        .testTarget(
            name: "NFNetlinkTests",
            dependencies: ["NFNetlink", "CNftables", "NFTModel", "SvcnatModel", "SvcnatSources", "SvcnatCore"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "KernelTests",
            dependencies: ["svcnat", "NFTModel", "SvcnatModel"],
            resources: [.copy("Helpers")]
        )
    ]
)
