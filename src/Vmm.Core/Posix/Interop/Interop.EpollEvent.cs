using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        /// <summary>
        /// struct epoll_event { uint32_t events; epoll_data_t data; }. glibc's sys/epoll.h declares
        /// it packed on x86-64 only (__EPOLL_PACKED): 12 bytes with the data at offset 4 there,
        /// 16 bytes with the data at offset 8 on arm64. One C# struct cannot have both layouts, so
        /// the events live in a byte buffer read and written through these helpers.
        /// </summary>
        internal static class EpollEvent
        {
            internal static readonly bool IsPacked = RuntimeInformation.ProcessArchitecture == Architecture.X64;

            internal static readonly int Size = IsPacked ? 12 : 16;

            private static readonly int DataOffset = IsPacked ? 4 : 8;

            internal static unsafe void Write(byte* at, uint events, ulong data)
            {
                new Span<byte>(at, Size).Clear();
                Unsafe.WriteUnaligned(at, events);
                Unsafe.WriteUnaligned(at + DataOffset, data);
            }

            internal static unsafe uint ReadEvents(byte* buffer, int index) => Unsafe.ReadUnaligned<uint>(buffer + (index * Size));

            internal static unsafe ulong ReadData(byte* buffer, int index) => Unsafe.ReadUnaligned<ulong>(buffer + (index * Size) + DataOffset);
        }
    }
}
