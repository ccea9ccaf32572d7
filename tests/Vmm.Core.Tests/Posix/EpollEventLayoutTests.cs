using System.Runtime.InteropServices;
using Vmm.Core.Posix;

namespace Vmm.Core.Tests.Posix;

[TestFixture]
public sealed class EpollEventLayoutTests
{
    [Test]
    public void Struct_epoll_event_is_packed_on_x64_and_aligned_elsewhere()
    {
        // glibc sys/epoll.h: __EPOLL_PACKED on x86-64 only.
        int expected = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 12 : 16;

        Assert.That(Interop.Libc.EpollEvent.Size, Is.EqualTo(expected));
    }

    [Test]
    public unsafe void Events_and_data_round_trip_at_their_offsets()
    {
        byte* buffer = stackalloc byte[2 * 16];
        new Span<byte>(buffer, 32).Fill(0xcc);

        Interop.Libc.EpollEvent.Write(buffer + Interop.Libc.EpollEvent.Size, Interop.Libc.EPOLLIN, 0x1122_3344_5566_7788UL);

        Assert.Multiple(() =>
        {
            Assert.That(Interop.Libc.EpollEvent.ReadEvents(buffer, 1), Is.EqualTo(Interop.Libc.EPOLLIN));
            Assert.That(Interop.Libc.EpollEvent.ReadData(buffer, 1), Is.EqualTo(0x1122_3344_5566_7788UL));
            Assert.That(buffer[Interop.Libc.EpollEvent.Size - 1], Is.EqualTo(0xcc), "the entry before is untouched");
        });
    }
}
