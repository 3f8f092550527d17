import Foundation

/// The built-in root filesystem recipes behind `lmctl image build rootfs --preset`.
public enum RootfsPresets {
    /// Debian 12 with systemd, cloud-init, openssh and ifupdown networking. cloud-init looks for a NoCloud seed
    /// (the host agent's `cidata` disk, or `ds=nocloud` on the kernel command line) and otherwise runs with no
    /// datasource, so it always finishes; the guest makes its own ssh host keys on first boot.
    public static func cloud() -> RootfsRecipe {
        var r = RootfsRecipe(title: "Liquid Metal cloud guest (Debian 12)")
        r.packages = [
            "systemd", "systemd-sysv", "udev", "dbus", "cloud-init", "openssh-server", "sudo",
            "ifupdown", "isc-dhcp-client", "iproute2", "iputils-ping", "netbase", "ca-certificates",
            "less", "procps", "e2fsprogs",
        ]
        r.files = [
            .init(path: "/etc/cloud/cloud.cfg.d/90-liquidmetal.cfg", text: """
                # Written by lmctl image build --preset cloud. Liquid Metal hands metadata to guests on a NoCloud
                # seed disk (filesystem label cidata); with no seed, cloud-init runs with no datasource.
                datasource_list: [NoCloud, None]
                # The image has no locales package; C.UTF-8 is built into glibc.
                locale: C.UTF-8

                """),
        ]
        r.enableServices = ["ssh.service"]
        return r
    }

    /// The `cloud` preset plus containerd (from Debian) and kubelet, kubeadm and kubectl from `source` (they are not
    /// in Debian; for example Kubernetes' own repository, `deb https://pkgs.k8s.io/core:/stable:/v1.31/deb/ /`,
    /// signed by the key at https://pkgs.k8s.io/core:/stable:/v1.31/deb/Release.key), and the modules of Debian's
    /// cloud kernel (the one `lmctl image build kernel` packages: build both from the same mirror), so that
    /// overlay, br_netfilter and netfilter's modules load at boot.
    public static func k8sNode(source: RootfsRecipe.PackageSource) -> RootfsRecipe {
        var r = cloud()
        r.title = "Liquid Metal Kubernetes node (Debian 12)"
        r.packages += ["containerd", "kubelet", "kubeadm", "kubectl", "conntrack", "iptables", "socat", "ethtool", "linux-image-cloud-amd64",
                       // a control-plane address without kube-vip's image (the airgapped template's VRRP address)
                       "keepalived"]
        r.sources = [source]
        r.files += [
            .init(path: "/etc/modules-load.d/kubernetes.conf", text: "overlay\nbr_netfilter\n"),
            .init(path: "/etc/sysctl.d/90-kubernetes.conf", text: """
                net.ipv4.ip_forward = 1
                net.bridge.bridge-nf-call-iptables = 1
                net.bridge.bridge-nf-call-ip6tables = 1

                """),
            .init(path: "/etc/containerd/config.toml", text: """
                # Written by lmctl image build --preset k8s-node: the CRI plugin with systemd cgroups, as kubeadm expects;
                # registry mirrors and CAs per registry under /etc/containerd/certs.d/<registry>/hosts.toml (the cluster
                # templates write them); the sandbox image kubeadm v1.33 to v1.36 use; CNI plugins where
                # kubernetes-cni puts them (Debian's containerd would look in /usr/lib/cni).
                version = 2
                [plugins."io.containerd.grpc.v1.cri"]
                  sandbox_image = "registry.k8s.io/pause:3.10.2"
                [plugins."io.containerd.grpc.v1.cri".registry]
                  config_path = "/etc/containerd/certs.d"
                [plugins."io.containerd.grpc.v1.cri".cni]
                  bin_dir = "/opt/cni/bin"
                  conf_dir = "/etc/cni/net.d"
                [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
                  runtime_type = "io.containerd.runc.v2"
                [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
                  SystemdCgroup = true

                """),
            .init(path: "/etc/crictl.yaml", text: "runtime-endpoint: unix:///run/containerd/containerd.sock\n"),
            .init(path: "/usr/local/sbin/lm-registry-mirror", text: NodeScripts.registryMirror, mode: 0o755),
            .init(path: "/usr/local/sbin/lm-kubeadm-timeouts", text: NodeScripts.kubeadmTimeouts, mode: 0o755),
            .init(path: "/usr/local/sbin/lm-control-plane-address", text: NodeScripts.controlPlaneAddress, mode: 0o755),
            .init(path: "/usr/local/sbin/lm-kubeadm-retry", text: NodeScripts.kubeadmRetry, mode: 0o755),
            .init(path: "/usr/local/sbin/lm-bridge-cni", text: NodeScripts.bridgeCNI, mode: 0o755),
            .init(path: "/etc/systemd/system/lm-bridge-cni.service", text: NodeScripts.bridgeCNIUnit),
        ]
        r.enableServices += ["containerd.service", "kubelet.service"]
        return r
    }

    /// What `--preset k8s-node` says when no package source is named.
    public static let k8sSourceHelp = """
        the k8s-node preset needs a package source for kubelet, kubeadm and kubectl (they are not in Debian), e.g.
          --package-source 'deb https://pkgs.k8s.io/core:/stable:/v1.31/deb/ /' --package-source-key Release.key
        with Release.key from https://pkgs.k8s.io/core:/stable:/v1.31/deb/Release.key
        (or [trusted=yes] in the line for an unsigned local mirror)
        """
}
