using System.Runtime.InteropServices;

namespace Vmm.Interop.Tests.Harness;

static partial class Posix
{
    public const int SigTerm = 15;
    public const int SigKill = 9;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int KillNative(int pid, int signal);

    /// <summary>Sends a signal; false when the process is already gone.</summary>
    public static bool Kill(int pid, int signal) => KillNative(pid, signal) == 0;
}
