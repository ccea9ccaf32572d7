namespace Vmm.Interop.Tests.Harness;

/// <summary>The two virtiofsd implementations the interop tests run.</summary>
public enum VirtiofsdKind
{
    /// <summary>The C virtiofsd of QEMU 7.2: <c>/usr/lib/qemu/virtiofsd</c> from Debian 12's qemu-system-common.</summary>
    C,

    /// <summary>The Rust virtiofsd 1.13 of Debian 13, run through Debian 13's own loader (peers/install-virtiofsd-rust.sh).</summary>
    Rust,
}

public sealed partial class BackendProcess
{
    /// <summary>Where Debian 12's qemu-system-common installs the C virtiofsd (not on PATH).</summary>
    public const string VirtiofsdC = "/usr/lib/qemu/virtiofsd";

    static readonly SemaphoreSlim RustGate = new(1, 1);
    static string? _rustLauncher;

    /// <summary>
    /// A virtiofsd exporting <paramref name="sharedDir"/> on <paramref name="socket"/>. Both serve
    /// ONE front-end connection and exit when it closes: start one per connection. The Rust one
    /// leaves its socket (and SOCKET.pid) behind; the test's fresh work directory takes them.
    /// <paramref name="tag"/> is passed to the Rust one only (it then offers the CONFIG protocol
    /// feature and serves the tag in its config); the C one has no config at all.
    /// </summary>
    public static async Task<BackendProcess> StartVirtiofsdAsync(VirtiofsdKind kind, string sharedDir, string socket, string? tag = null)
    {
        if (!Directory.Exists(sharedDir))
            throw new ArgumentException($"The shared directory {sharedDir} does not exist.", nameof(sharedDir));
        if (kind == VirtiofsdKind.C)
        {
            if (!File.Exists(VirtiofsdC))
                throw new AssertionException($"{VirtiofsdC} is not installed (apt-get install qemu-system-common; ./test installs it).");
            // As root the default namespace sandbox works (unshare of mount, pid and net namespaces).
            string[] args = [$"--socket-path={socket}", "-o", $"source={sharedDir}", "-o", "cache=auto"];
            return await StartAsync(ChildProcess.Start("virtiofsd (C)", VirtiofsdC, args), socket).ConfigureAwait(false);
        }

        var launcher = await GetRustVirtiofsdAsync().ConfigureAwait(false);
        List<string> rust = [$"--socket-path={socket}", $"--shared-dir={sharedDir}"];
        if (tag is not null)
            rust.Add($"--tag={tag}");
        return await StartAsync(ChildProcess.Start("virtiofsd (Rust)", launcher, rust), socket).ConfigureAwait(false);
    }

    /// <summary>
    /// The launcher of the Rust virtiofsd: peers/install-virtiofsd-rust.sh prints it, installing
    /// first when its cache is empty (./test runs it before the tests). Fails, never skips.
    /// </summary>
    public static async Task<string> GetRustVirtiofsdAsync()
    {
        await RustGate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (_rustLauncher is not null)
                return _rustLauncher;
            var script = RepoLayout.VirtiofsdRustInstaller;
            if (!File.Exists(script))
                Assert.Fail($"The installer {script} is missing.");
            using var p = ChildProcess.Start("install-virtiofsd-rust", "/bin/bash", [script, "--quiet"]);
            if (!await p.WaitForExitAsync(TimeSpan.FromMinutes(5)).ConfigureAwait(false))
                Assert.Fail($"{script} did not finish within 5 minutes:\n{p.OutputTail()}");
            var launcher = p.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault(l => l.StartsWith('/'));
            if (p.ExitCode != 0 || launcher is null || !File.Exists(launcher))
                Assert.Fail($"The Rust virtiofsd is not installed and could not be ({script} exited {p.ExitCode}; ./test installs it):\n{p.OutputTail()}");
            return _rustLauncher = launcher!;
        }
        finally
        {
            RustGate.Release();
        }
    }
}
