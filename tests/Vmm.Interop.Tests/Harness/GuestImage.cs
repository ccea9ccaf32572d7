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
        var dir = await ChildProcess.RunScriptForPathAsync(RepoLayout.GuestBuilder, "Could not build the guest kernel and initramfs").ConfigureAwait(false);
        var image = new GuestImage(Path.Combine(dir, "vmlinuz"), Path.Combine(dir, "initramfs.gz"));
        if (!File.Exists(image.Kernel) || !File.Exists(image.Initramfs))
            Assert.Fail($"{RepoLayout.GuestBuilder} reported {dir} but it holds no vmlinuz and initramfs.gz.");
        return image;
    }
}
