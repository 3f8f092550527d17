import ArgumentParser
import Foundation
import ImageBuilder
import MicroVMCore
import OCIImage
import OCIRegistry

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Build microVM kernel and root filesystem images as OCI images.",
        subcommands: [ImageBuild.self])
}

struct ImageBuild: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build an image reproducibly (same inputs, same digest) and push it or write an OCI layout.",
        subcommands: [BuildKernel.self, BuildKernelModules.self, BuildRootfs.self])
}

/// Options every build shares: where the image goes and how.
struct BuildOutputOptions: ParsableArguments {
    @Option(help: "Image reference, e.g. 127.0.0.1:5111/lm/kernel:6.1 (its tag also names the layout entry).")
    var tag: String
    @Flag(help: "Push to the registry named in --tag.")
    var push = false
    @Option(help: "Write an OCI image layout instead: oci-layout:DIR.")
    var output: String?
    @Option(name: .customLong("insecure-registry"), help: "Registry host:port reached over plain HTTP (repeatable); loopback registries always are.")
    var insecureRegistries: [String] = []
    @Option(name: .customLong("registry-auth-file"), help: "Docker-style config.json with registry credentials.")
    var registryAuthFile: String?
    @Option(name: .customLong("work-dir"), help: "Scratch directory. (default: a new directory under /var/tmp)")
    var workDir: String?
    @Option(name: .customLong("cache-dir"), help: "Downloaded packages are kept here. (default: /var/cache/liquidmetal)")
    var cacheDir = "/var/cache/liquidmetal"
    @Option(name: .customLong("source-date-epoch"), help: "Timestamp of every file and of the image, in seconds. (default: $SOURCE_DATE_EPOCH or 1700000000)")
    var sourceDateEpoch: Int64?

    func validate() throws {
        guard push != (output != nil) else { throw ValidationError("give exactly one of --push and --output oci-layout:DIR") }
        if let output, !output.hasPrefix("oci-layout:") { throw ValidationError("--output must look like oci-layout:DIR") }
        do { _ = try ImageReference(parsing: tag) } catch { throw ValidationError("--tag: \(error.message)") }
    }

    func run(_ recipe: ImageRecipe) async throws {
        let ref = try ImageReference(parsing: tag)
        let destination: ImageDestination
        if let output {
            destination = .layout(directory: String(output.dropFirst("oci-layout:".count)), tag: ref.tag ?? "latest")
        } else {
            var config = RegistryConfig(plainHTTP: Set(insecureRegistries))
            if let f = registryAuthFile { config.credentials = try RegistryConfig.loadCredentials(dockerConfigAt: f) }
            destination = .registry(ref, config)
        }
        let epoch = SourceDateEpoch(seconds: sourceDateEpoch ?? SourceDateEpoch(environmentValue: ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"])?.seconds ?? 1_700_000_000)
        let work = workDir ?? "/var/tmp/lmctl-build-\(getpid())"
        defer { if workDir == nil { try? FileManager.default.removeItem(atPath: work) } }
        let start = Date()
        let builder = ImageBuilder(workDirectory: work, cacheDirectory: cacheDir, epoch: epoch) { line in
            FileHandle.standardError.write(Data("lmctl: \(line)\n".utf8))
        }
        do {
            let built = try await builder.build(recipe, to: destination)
            print("\(built.destination)@\(built.manifestDigest)")
            FileHandle.standardError.write(Data(String(format: "lmctl: built in %.1f s; layer %.1f MiB compressed\n", Date().timeIntervalSince(start), Double(built.layerSize) / 1_048_576).utf8))
        } catch let e as ImageBuildError {
            throw CommandFailed(description: e.description)
        } catch let e as RegistryError {
            throw CommandFailed(description: e.message)
        }
    }
}

struct KernelOptions: ParsableArguments {
    @Option(help: "Debian kernel package. (default: the newest Debian 12 cloud kernel, linux-image-cloud-amd64's dependency)")
    var package: String?
    @Option(help: "A local kernel .deb instead of downloading one.")
    var deb: String?
    var source: KernelSource { deb.map { .deb($0) } ?? .package(package) }
}

struct BuildKernel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernel",
        abstract: "A kernel image: boot/vmlinuz (QEMU), boot/vmlinux (Firecracker, Cloud Hypervisor), boot/initrd, lib/modules/<release>/.",
        discussion: "The initrd loads virtio, ext4, vfat and iso9660 modules, mounts /dev/vda (or lm_root=DEV) and switches to its /sbin/init.")
    @OptionGroup var kernel: KernelOptions
    @OptionGroup var output: BuildOutputOptions
    func run() async throws { try await output.run(.kernel(kernel.source)) }
}

struct BuildKernelModules: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kernel-modules", abstract: "A modules-only image: lib/modules/<release>/.")
    @OptionGroup var kernel: KernelOptions
    @OptionGroup var output: BuildOutputOptions
    func run() async throws { try await output.run(.kernelModules(kernel.source)) }
}

struct BuildRootfs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rootfs",
        abstract: "A root filesystem image.",
        discussion: "Presets: minimal (busybox; an /sbin/init that prints LIQUIDMETAL-GUEST-READY and configures eth0 from lm_ip=ADDR/PREFIX lm_gw=GW). The cloud and k8s-node presets and --recipe are not implemented yet.")
    @Option(help: "minimal, cloud or k8s-node.") var preset: String = "minimal"
    @OptionGroup var output: BuildOutputOptions
    func run() async throws {
        switch preset {
        case "minimal": try await output.run(.minimalRootfs)
        case "cloud", "k8s-node": throw CommandFailed(description: "--preset \(preset) is not implemented yet (only minimal is)")
        default: throw ValidationError("--preset must be minimal, cloud or k8s-node")
        }
    }
}
