namespace Vmm.Interop.Tests.Harness;

/// <summary>
/// The guest kernel and initramfs built by guest/build-guest.sh (cached; built on first use
/// when ./test has not built it already). A missing tool fails the test, never skips it.
/// </summary>
public sealed record GuestImage(string Kernel, string Initramfs)
{
    static readonly SemaphoreSlim Gate = new(1, 1);
    static GuestImage? _built;

    public static async Task<GuestImage> GetAsync()
    {
        await Gate.WaitAsync().ConfigureAwait(false);
        try
        {
            return _built ??= await BuildAsync().ConfigureAwait(false);
        }
        finally
        {
            Gate.Release();
        }
    }

    static async Task<GuestImage> BuildAsync()
    {
        var script = RepoLayout.GuestBuilder;
        if (!File.Exists(script))
            Assert.Fail($"The guest image builder {script} is missing.");
        using var p = ChildProcess.Start("build-guest", "/bin/bash", [script, "--quiet"]);
        if (!await p.WaitForExitAsync(TimeSpan.FromMinutes(5)).ConfigureAwait(false))
            Assert.Fail($"{script} did not finish within 5 minutes:\n{p.OutputTail()}");
        var lines = p.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var dir = lines.LastOrDefault(l => l.StartsWith('/'));
        if (p.ExitCode != 0 || dir is null)
            Assert.Fail($"Could not build the guest kernel and initramfs ({script} exited {p.ExitCode}):\n{p.OutputTail()}");
        var image = new GuestImage(Path.Combine(dir!, "vmlinuz"), Path.Combine(dir!, "initramfs.gz"));
        if (!File.Exists(image.Kernel) || !File.Exists(image.Initramfs))
            Assert.Fail($"{script} reported {dir} but it holds no vmlinuz and initramfs.gz.");
        return image;
    }
}
