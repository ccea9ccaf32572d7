namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static class Libraries
    {
        /// <summary>glibc, called directly (no shim) for what Mono.Posix.NETStandard lacks.</summary>
        internal const string Libc = "libc";
    }
}
