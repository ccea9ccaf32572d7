using NUnit.Framework;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Protocol;

[TestFixture]
public class ReplyValidationTests
{
    private static VhostUserHeader Reply(VhostUserRequest request, uint size, uint flags = VhostUserCodec.ReplyFlags) =>
        new((uint)request, flags, size);

    private static void AssertRejected(VhostUserHeader header, VhostUserRequest expected, string messagePart) =>
        Assert.That(
            () => VhostUserCodec.ValidateReplyHeader(header, expected),
            Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains(messagePart));

    [Test]
    public void Well_formed_replies_pass()
    {
        Assert.Multiple(() =>
        {
            Assert.That(() => VhostUserCodec.ValidateReplyHeader(Reply(VhostUserRequest.GET_FEATURES, 8), VhostUserRequest.GET_FEATURES), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateReplyHeader(Reply(VhostUserRequest.GET_VRING_BASE, 8), VhostUserRequest.GET_VRING_BASE), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateReplyHeader(Reply(VhostUserRequest.SET_MEM_TABLE, 8), VhostUserRequest.SET_MEM_TABLE), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateReplyHeader(Reply(VhostUserRequest.GET_INFLIGHT_FD, 24), VhostUserRequest.GET_INFLIGHT_FD), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateReplyHeader(Reply(VhostUserRequest.GET_SHMEM_CONFIG, 2056), VhostUserRequest.GET_SHMEM_CONFIG), Throws.Nothing);
        });
    }

    [Test]
    public void Flags_0x1_instead_of_0x5_is_rejected() =>
        AssertRejected(Reply(VhostUserRequest.GET_FEATURES, 8, 0x1), VhostUserRequest.GET_FEATURES, "reply bit clear");

    [Test]
    public void Need_reply_on_a_reply_is_rejected() =>
        AssertRejected(Reply(VhostUserRequest.GET_FEATURES, 8, 0xD), VhostUserRequest.GET_FEATURES, "need_reply");

    [TestCase(0x4u)]
    [TestCase(0x6u)]
    [TestCase(0x7u)]
    public void Bad_version_on_a_reply_is_rejected(uint flags) =>
        AssertRejected(Reply(VhostUserRequest.GET_FEATURES, 8, flags), VhostUserRequest.GET_FEATURES, "version");

    [Test]
    public void Reserved_bits_on_a_reply_are_rejected() =>
        AssertRejected(Reply(VhostUserRequest.GET_FEATURES, 8, 0x105), VhostUserRequest.GET_FEATURES, "reserved");

    [Test]
    public void Wrong_request_code_is_rejected() =>
        AssertRejected(Reply(VhostUserRequest.GET_PROTOCOL_FEATURES, 8), VhostUserRequest.GET_FEATURES, "expected GET_FEATURES");

    [Test]
    public void Unknown_request_code_in_a_reply_is_rejected() =>
        AssertRejected(new VhostUserHeader(999, 0x5, 8), VhostUserRequest.GET_FEATURES, "unknown request 999");

    [TestCase(VhostUserRequest.GET_FEATURES, 0u)]
    [TestCase(VhostUserRequest.GET_FEATURES, 4u)]
    [TestCase(VhostUserRequest.GET_VRING_BASE, 16u)]
    [TestCase(VhostUserRequest.SET_VRING_NUM, 0u)]
    [TestCase(VhostUserRequest.GET_INFLIGHT_FD, 8u)]
    [TestCase(VhostUserRequest.GET_SHMEM_CONFIG, 12u)]
    public void Wrong_size_is_rejected(VhostUserRequest request, uint size) =>
        AssertRejected(Reply(request, size), request, "does not fit");

    [Test]
    public void Oversized_reply_is_rejected_before_the_rule() =>
        AssertRejected(Reply(VhostUserRequest.GET_CONFIG, 0xFFFF_FFFF), VhostUserRequest.GET_CONFIG, "exceeds the maximum");

    [Test]
    public void GET_CONFIG_reply_must_match_the_request_size_or_be_empty()
    {
        var rule = VhostUserCodec.GetConfigReplyRule(12 + 8);
        Assert.Multiple(() =>
        {
            Assert.That(() => VhostUserCodec.ValidateReplyHeader(Reply(VhostUserRequest.GET_CONFIG, 20), VhostUserRequest.GET_CONFIG, rule), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateReplyHeader(Reply(VhostUserRequest.GET_CONFIG, 0), VhostUserRequest.GET_CONFIG, rule), Throws.Nothing);
            Assert.That(
                () => VhostUserCodec.ValidateReplyHeader(Reply(VhostUserRequest.GET_CONFIG, 16), VhostUserRequest.GET_CONFIG, rule),
                Throws.TypeOf<VhostUserProtocolException>());
            Assert.That(
                () => VhostUserCodec.ValidateReplyHeader(Reply(VhostUserRequest.GET_CONFIG, 12), VhostUserRequest.GET_CONFIG, rule),
                Throws.TypeOf<VhostUserProtocolException>());
        });
    }

    [Test]
    public void Backend_replies_are_u64_with_flags_0x5()
    {
        Assert.Multiple(() =>
        {
            Assert.That(
                () => VhostUserCodec.ValidateBackendReplyHeader(new VhostUserHeader(8, 0x5, 8), VhostUserBackendRequest.SHARED_OBJECT_LOOKUP),
                Throws.Nothing);
            Assert.That(
                () => VhostUserCodec.ValidateBackendReplyHeader(new VhostUserHeader(8, 0x1, 8), VhostUserBackendRequest.SHARED_OBJECT_LOOKUP),
                Throws.TypeOf<VhostUserProtocolException>());
            Assert.That(
                () => VhostUserCodec.ValidateBackendReplyHeader(new VhostUserHeader(7, 0x5, 8), VhostUserBackendRequest.SHARED_OBJECT_LOOKUP),
                Throws.TypeOf<VhostUserProtocolException>());
            Assert.That(
                () => VhostUserCodec.ValidateBackendReplyHeader(new VhostUserHeader(8, 0x5, 0), VhostUserBackendRequest.SHARED_OBJECT_LOOKUP),
                Throws.TypeOf<VhostUserProtocolException>());
        });
    }

    [Test]
    public void Headers_built_by_the_codec_validate()
    {
        foreach (var request in Enum.GetValues<VhostUserRequest>())
        {
            var rule = VhostUserPayloadRules.ForRequest(request);
            var header = VhostUserCodec.RequestHeader(request, (int)rule.Min, needReply: true);
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(header), Throws.Nothing, request.ToString());
            Assert.That(VhostUserCodec.NeedsReply(header), Is.True);

            var replyRule = VhostUserPayloadRules.ForReply(request);
            var reply = VhostUserCodec.ReplyHeader(request, (int)replyRule.Min);
            Assert.That(() => VhostUserCodec.ValidateReplyHeader(reply, request), Throws.Nothing, request.ToString());
        }
    }
}
