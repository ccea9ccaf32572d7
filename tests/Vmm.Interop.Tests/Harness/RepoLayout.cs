namespace Vmm.Interop.Tests.Harness;

/// <summary>Where the repository, the <c>./vmm</c> launcher and the guest tooling are.</summary>
public static class RepoLayout
{
    static readonly Lazy<string> LazyRoot = new(FindRoot);

    /// <summary>The folder holding ManagedVmm.sln, found by walking up from the test assembly.</summary>
    public static string Root => LazyRoot.Value;

    /// <summary>The repository's <c>vmm</c> launcher script.</summary>
    public static string VmmLauncher => Path.Combine(Root, "vmm");

    /// <summary>The script that builds (or finds cached) the guest kernel and initramfs.</summary>
    public static string GuestBuilder => Path.Combine(Root, "tests", "Vmm.Interop.Tests", "guest", "build-guest.sh");

    /// <summary>The script that installs (or finds cached) Debian 13's Rust virtiofsd and prints its launcher.</summary>
    public static string VirtiofsdRustInstaller => Path.Combine(Root, "tests", "Vmm.Interop.Tests", "peers", "install-virtiofsd-rust.sh");

    static string FindRoot()
    {
        var start = Path.GetDirectoryName(typeof(RepoLayout).Assembly.Location) ?? AppContext.BaseDirectory;
        for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "ManagedVmm.sln")))
                return dir.FullName;
        }
        throw new InvalidOperationException($"No ManagedVmm.sln in {start} or any folder above it.");
    }
}
