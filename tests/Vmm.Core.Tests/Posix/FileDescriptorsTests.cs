using System.Net.Sockets;
using Vmm.Core.Events;
using Vmm.Core.Posix;
using Vmm.Core.Posix.Sockets;
using Vmm.Core.Tests.Support;

namespace Vmm.Core.Tests.Posix;

[TestFixture]
public sealed class FileDescriptorsTests
{
    [Test]
    public void Each_kind_of_descriptor_is_told_apart()
    {
        using var eventFd = new EventFd();
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (read)
        using (write)
        using (SafeFileDescriptor memfd = MemFd.Create("kind", 4096))
        using (SafeFileDescriptor full = TestFiles.Open("/dev/full"))
        using (SafeFileDescriptor directory = TestFiles.Open("/tmp", Mono.Unix.Native.OpenFlags.O_RDONLY | Mono.Unix.Native.OpenFlags.O_DIRECTORY))
        {
            Assert.Multiple(() =>
            {
                Assert.That(FileDescriptors.GetKind(eventFd.Handle), Is.EqualTo(FileKind.EventFd));
                Assert.That(FileDescriptors.GetKind(read), Is.EqualTo(FileKind.Pipe));
                Assert.That(FileDescriptors.GetKind(write), Is.EqualTo(FileKind.Pipe));
                Assert.That(FileDescriptors.GetKind(memfd), Is.EqualTo(FileKind.RegularFile));
                Assert.That(FileDescriptors.GetKind(full), Is.EqualTo(FileKind.CharacterDevice));
                Assert.That(FileDescriptors.GetKind(directory), Is.EqualTo(FileKind.Directory));
                Assert.That(FileDescriptors.Describe(eventFd.Handle), Is.EqualTo("an eventfd"));
                Assert.That(FileDescriptors.Describe(read), Is.EqualTo("a pipe"));
                Assert.That(FileDescriptors.Describe(full), Is.EqualTo("the file /dev/full"));
            });
        }
    }

    [Test]
    public void A_socket_is_a_socket()
    {
        (Socket a, Socket b) = UnixSocketPair.Create();
        using (a)
        using (b)
        using (var fd = new SafeFileDescriptor((int)a.Handle, ownsHandle: false))
        {
            Assert.That(FileDescriptors.GetKind(fd), Is.EqualTo(FileKind.Socket));
        }
    }

    [Test]
    public void SetNonBlocking_sets_O_NONBLOCK_on_the_open_file()
    {
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (read)
        using (write)
        {
            Assert.That(FileDescriptors.IsNonBlocking(read), Is.False);
            FileDescriptors.SetNonBlocking(read);
            Assert.That(FileDescriptors.IsNonBlocking(read), Is.True);
            Assert.That(FileDescriptors.IsNonBlocking(write), Is.False, "the other end is another open file");
        }
    }
}
