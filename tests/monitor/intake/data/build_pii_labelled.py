"""Builds pii_labelled.jsonl, the labelled PII set that test_redact.py scores the redactor on.

    python tests/monitor/intake/data/build_pii_labelled.py

The output is committed; tests only read it. Snippets mark their PII inline, and the builder turns
marks into character spans. Card and resident-ID check digits are computed here, independently of
monitor.intake.redact, so the labels do not inherit the redactor's bugs:

    [[KIND|text]]        labelled span of KIND, text as written
    [[+CARD|4111 ...?]]  labelled; '?' becomes the Luhn check digit (CN_ID: the MOD 11-2 character)
    [[-CARD|4111 ...?]]  not labelled; '?' becomes a wrong check digit (hard negative)
    [[~CN_ID|...?]]      not labelled; '?' becomes the correct check character, but the number is
                         invalid otherwise (impossible birth date, unknown province) or not a card
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

OUTPUT = Path(__file__).with_name("pii_labelled.jsonl")
MARK = re.compile(r"\[\[([+\-~]?)([A-Z_]+)\|(.+?)\]\]")
CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def luhn_check_digit(payload_digits: str) -> str:
    """The digit that, appended, makes payload_digits Luhn-valid."""
    total = 0
    for position, char in enumerate(reversed(payload_digits)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return str((10 - total % 10) % 10)


def cn_id_check_char(first_17: str) -> str:
    total = sum(int(digit) * weight for digit, weight in zip(first_17, CN_ID_WEIGHTS, strict=True))
    return "10X98765432"[total % 11]


def fill_check(kind: str, template: str, correct: bool) -> str:
    payload = re.sub(r"[^0-9]", "", template.replace("?", ""))
    right = luhn_check_digit(payload) if kind == "CARD" else cn_id_check_char(payload)
    if correct:
        return template.replace("?", right)
    alphabet = "0123456789" if kind == "CARD" else "10X98765432"
    wrong = alphabet[(alphabet.index(right) + 3) % len(alphabet)]
    return template.replace("?", wrong)


def render(snippet: str) -> dict[str, object]:
    """Plain text plus labelled spans from one marked snippet."""
    pieces: list[str] = []
    spans: list[dict[str, object]] = []
    position = 0
    length = 0
    for mark in MARK.finditer(snippet):
        before = snippet[position : mark.start()]
        pieces.append(before)
        length += len(before)
        sign, kind, value = mark.groups()
        if "?" in value:
            value = fill_check(kind, value, correct=sign in "+~")
        if sign in ("", "+"):
            spans.append({"start": length, "end": length + len(value), "kind": kind})
        pieces.append(value)
        length += len(value)
        position = mark.end()
    pieces.append(snippet[position:])
    return {"text": "".join(pieces), "pii": spans}


SNIPPETS = [
    # ---- English chat --------------------------------------------------------------------------
    "Hi, my email is [[EMAIL|jane.doe@gmail.com]], please send the invoice there.",
    "You can reach me at [[PHONE|+1 (415) 555-0132]] after 6pm Pacific.",
    "My card number is [[+CARD|4111 1111 1111 111?]], exp 09/27. Why was it declined?",
    "Please update the billing email to [[EMAIL|accounts-payable@acme-corp.com]] and the phone to "
    "[[PHONE|(212) 555-0187]].",
    "I paid with [[+CARD|5555-5555-5555-444?]] but the order 100234567 still shows pending.",
    "The server at [[IP|192.168.1.254]] keeps dropping connections on port 8080.",
    "Can you write a polite reply to [[EMAIL|m.thompson@university.edu]] declining the meeting on 3/14?",
    "Our office line is [[PHONE|+44 20 7946 0958]], open 9:00-17:30 Monday to Friday.",
    "Amex [[+CARD|3782 822463 1000?]] was charged $1,249.99 twice on 2024-02-03.",
    "ssh into [[IP|10.0.0.12]] and run `df -h`, the disk is 97% full.",
    "Summarize this thread and cc [[EMAIL|ops+alerts@example.org]] on the result.",
    "I moved to Berlin, new number [[PHONE|+49 30 12345678]], old one is disconnected.",
    "Why does Python 3.11.7 print 0.30000000000000004 for 0.1 + 0.2?",
    "We sold 12,500 units in Q3 2023 at $49.99 each, what was the revenue?",
    "Order #100234567890 was placed on 2024-01-15 at 14:32:10 UTC.",
    "The meeting is at 10:30 in room 1203; bring the Q4 2023 numbers.",
    "Convert 1700000000 (unix seconds) to a human readable date.",
    "What is 2147483647 + 1 in a signed 32-bit int?",
    "My tracking number is 9400111899223344556677, where is the parcel?",
    "IMEI 356938035643809 shows as blacklisted, what does that mean?",
    "Is ISBN 9780306406157 the first edition?",
    "Charge failed for test card [[-CARD|4539 1488 0343 646?]], is the number mistyped?",
    "Customer ref 1000234567890 and invoice INV-2024-00042 both need updating.",
    "Call me at [[PHONE|646-555-0199]] or text [[PHONE|+1 646 555 0123]] if it's urgent.",
    "Loopback is [[IP|127.0.0.1]] and the container binds [[IP|0.0.0.0]]:5000.",
    "The IPv6 address [[IP|2001:db8:85a3::8a2e:370:7334]] is unreachable from our VPC.",
    "Our router's link-local is [[IP|fe80::1ff:fe23:4567:890a]], how do I ping it?",
    "Upgrade from version 4.2.0.1 to 4.3 broke our build.",
    "The meetup runs 18:30:00-21:00:00, doors open at 18:15.",
    "I got charged 3 times: $19.99, $19.99 and $29.99 on card ending 4242.",
    "Use sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 to verify the download.",
    "Request id 550e8400-e29b-41d4-a716-446655440000 failed with HTTP 503.",
    "My Discover card [[+CARD|6011 0009 9013 942?]] was flagged for fraud.",
    "Send the contract to [[EMAIL|legal@smithandpartners.co.uk]] before Friday.",
    "Population of Tokyo is about 37,400,000 and Singapore about 5,900,000.",
    "JCB [[+CARD|3530 1113 3330 000?]] is not accepted at this merchant?",
    "Reset the password for [[EMAIL|k.nakamura@example.jp]], she is locked out.",
    "He lives in Sydney, number is [[PHONE|+61 2 9876 5432]].",
    "The Diners card [[+CARD|3056 930902 590?]] expired in 2022.",
    "Mastercard 2-series [[+CARD|2223 0031 2200 322?]] works in the sandbox?",
    "Here's my UnionPay: [[+CARD|6212 3456 7890 1234 56?]]",
    "Our bank routing number is 021000021 and the SWIFT is CHASUS33.",
    "Flight CA981 departs at 13:05, seat 32K, booking ref X7Y2Z9.",
    "My French number: [[PHONE|+33 1 23 45 67 89]], WhatsApp works too.",
    "In Mumbai, try [[PHONE|+91 98765 43210]].",
    "That's a 16-digit id 1234567812345670 from our ERP, not a card.",
    "Contact support at [[EMAIL|support@help.example.com]] or [[PHONE|+1-800-555-0199]].",
    "Compute 123456789 * 987654321 step by step.",
    "Roll out to 25% of traffic on 2024-05-01, then 100% on 2024-05-08.",
    # ---- Chinese -------------------------------------------------------------------------------
    "我的手机号是[[PHONE|13812345678]]谢谢",
    "请把发票寄到[[EMAIL|wang.lei@163.com]]，电话[[PHONE|139-1234-5678]]",
    "身份证号：[[+CN_ID|11010519491231002?]]，姓名张三，请帮我填表。",
    "订单号 202401150001234 已发货，金额 ¥1,299.00，预计3天送达。",
    "我2023年在北京买了3台电脑，总价12888元，能开发票吗？",
    "会议时间 2024-03-15 14:30:00，地点3楼301会议室。",
    "快递单号 SF1234567890123 请查收。",
    "银行卡号[[+CARD|6217 0012 3456 7890 12?]]，开户行是建设银行。",
    "联系人：李四，手机[[PHONE|+86 138 0013 8000]]，邮箱[[EMAIL|lisi@qq.com]]",
    "这个身份证号[[-CN_ID|32058219880808005?]]校验位好像不对，帮我看看。",
    "身份证[[+CN_ID|44030619900101123?]]，出生日期应该是1990年1月1日吧？",
    "帮我算一下 [[~CN_ID|37020219830229123?]] 这个号码的出生日期是否有效",
    "客户电话[[PHONE|15900001111]]，地址上海市浦东新区世纪大道100号。",
    "我的QQ号是123456789，微信同手机[[PHONE|186 1234 5678]]。",
    "服务器IP是[[IP|120.92.44.7]]，端口22，用户名root。",
    "Python 3.12 和 3.11.7 有什么区别？",
    "一共 15 个订单，平均每单 268.5 元，总计 4027.5 元。",
    "我的身份证是[[+CN_ID|51010719920315672?]]，手机[[PHONE|17712345678]]，帮我写个实名认证的申请。",
    "请致电[[PHONE|0086 135 0000 1234]]联系王经理。",
    "数据库连接串：mysql://admin@[[IP|172.16.254.1]]:3306/prod",
    "这张卡[[-CARD|6222 0200 1234 567?]]提示卡号错误，是不是输错了？",
    "商品编号 880012345678，库存 2000 件。",
    "2024年第一季度营收同比增长 23.5%，达到 1,234,567 万元。",
    "给[[EMAIL|zhang_wei2019@sina.com.cn]]发一封催款邮件，语气委婉一点。",
    "订单号202401151234567890，请帮我查一下物流。",
    "我的身份证号码是[[+CN_ID|33010619750630321?]]请保密",
    "错误码 10086，请稍后再试。",
    "我的手机尾号是5678，请核实身份。",
    "登录日志：[[IP|58.61.32.11]] 于 2024-03-02 08:15:33 登录成功。",
    "员工工号 20230415，部门编号 3012。",
    "帮我生成一个测试用的身份证号格式说明，比如前6位是地区码。",
    "号码 [[~CN_ID|99010519900101123?]] 是假的吧，开头地区码不存在。",
    "我是[[PHONE|13912345678]]，刚才那个订单取消一下",
    "时间戳1705305600123转换成北京时间是多少？",
    "新手机号：[[PHONE|+86-18612345678]]，旧号停用了。",
    # ---- Vietnamese ----------------------------------------------------------------------------
    "Số điện thoại của tôi là [[PHONE|0912 345 678]], gọi sau 5 giờ nhé.",
    "Liên hệ [[PHONE|+84 90 123 45 67]] hoặc email [[EMAIL|nguyen.van.a@yahoo.com.vn]]",
    "SĐT: [[PHONE|0387654321]], địa chỉ 123 Lê Lợi, Quận 1.",
    "Giá 1.250.000 đồng, mã đơn hàng 20240115123, giao trong 2 ngày.",
    "Zalo [[PHONE|0903.123.456]] nha anh.",
    "Số tài khoản 0123456789 tại Vietcombank, chủ tài khoản Trần Thị B.",
    "Em gửi báo giá qua [[EMAIL|tranthib.sales@fpt.com.vn]] giúp anh.",
    "Năm 2023 doanh thu đạt 15,7 tỷ đồng, tăng 12% so với 2022.",
    "Gọi cho tôi theo số [[PHONE|+84 912 345 678]] vào buổi sáng.",
    "Phiên bản 3.5.7 bị lỗi khi chạy trên Windows 11.",
    "Hotline [[PHONE|0283 123 4567]] hỗ trợ 24/7.",
    "Mã OTP của bạn là 482913, hiệu lực trong 5 phút.",
    "Anh ơi số em là [[PHONE|0977123456]], có gì nhắn Zalo nhé.",
    "Thẻ [[+CARD|4984 1234 5678 901?]] của tôi bị khóa, làm sao mở lại?",
    "Đơn hàng #SG2024011500123 đã được giao lúc 16:45.",
    "Cho mình hỏi máy chủ [[IP|103.21.244.15]] có bị chặn không?",
    "Mã số thuế 0312345678 của công ty đã được cấp.",
    # ---- Singapore -----------------------------------------------------------------------------
    "My HP is [[PHONE|9123 4567]], text me when you're downstairs.",
    "Call [[PHONE|+65 6123 4567]] to book at the clinic.",
    "whatsapp me at [[PHONE|81234567]] for the viewing.",
    "Postal code 238859, unit #12-34, Orchard Road.",
    "Order 91234567 has shipped from the Jurong warehouse.",
    "Our Singapore office: [[PHONE|+65 8765 4321]], ask for Mei Ling.",
    "NRIC is not needed, just your mobile: [[PHONE|8888 1234]].",
    "Budget for the fit-out is 86000000 IDR, roughly S$7,500.",
    # ---- mixed zh-en / vi-en -------------------------------------------------------------------
    "帮我check一下这个email: [[EMAIL|li.ming@outlook.com]] 是不是valid",
    "Please call 王先生 at [[PHONE|13612345678]] to confirm the delivery.",
    "客户说他的card [[+CARD|4012 8888 8888 188?]] 被decline了，why?",
    "server [[IP|47.98.12.3]] 的 nginx 返回 502，帮我debug一下",
    "Gửi file cho chị qua email [[EMAIL|hoa.le@gmail.com]] hoặc gọi [[PHONE|0935 123 456]] nha.",
    "用户反馈：I can't login, my phone is [[PHONE|+86 137 1234 5678]]",
    "pip install torch==2.4.1 在 Python 3.11.7 上报错 error: subprocess-exited-with-error",
    "The 订单 total is ¥8,888.00 for 16 items, 发票 number 04400123.",
    # ---- code and logs -------------------------------------------------------------------------
    'DB_HOST = "[[IP|10.12.0.5]]"\nDB_PORT = 5432\nTIMEOUT_MS = 86400000',
    "MOD = 1_000_000_007\nMAX_INT = 2147483647\nSEED = 20240115\nPRIME = 998244353",
    "def luhn(n):\n    return sum(int(d) for d in str(n)) % 10 == 0\nprint(luhn(79927398713))",
    '{"user": "bob", "email": "[[EMAIL|bob.smith@company.io]]", "ip": "[[IP|203.0.113.45]]", "retries": 3}',
    "2024-01-15T08:30:00.123Z INFO request from [[IP|198.51.100.23]] took 1234ms status=200",
    "const uuid = '123e4567-e89b-12d3-a456-426614174000';\nconst port = 3000;",
    "x = arr[::2]\ny = arr[1::3]\nstd::vector<int> v; auto m = std::map<int, int>{};",
    "NS_PER_DAY = 86_400_000_000_000\nINT64_MAX = 9223372036854775807",
    "FNV_OFFSET = 14695981039346656037\nFNV_PRIME = 1099511628211",
    "commit a3f5c9e2b7d41f0e8c6a9b3d5e7f1a2c4b6d8e0f\nAuthor: Dev <[[EMAIL|dev.one@example.com]]>",
    "curl -H 'X-Forwarded-For: [[IP|192.0.2.44]]' https://api.example.com/v1/users/12345",
    "assert parse_version('10.0.19045.3803') > parse_version('10.0.19044.0')",
    "@app.route('/users/<int:user_id>')\ndef get_user(user_id):\n    return db.get(user_id)",
    "npm install @types/node@18.11.9 --save-dev",
    "time.sleep(0.5)  # wait 500ms\nwhile elapsed < 12:30:45: pass",
    "ifconfig eth0 inet6 add [[IP|2001:0db8:85a3:0000:0000:8a2e:0370:7334]]/64",
    "MAC address 00:1a:2b:3c:4d:5e is on VLAN 100.",
    "listen [::]:443 ssl;\nserver_name example.com;",
    "mapped = '[[IP|::ffff:192.0.2.128]]'",
    "colors = {'red': 0xFF0000, 'green': 0x00FF00, 'blue': 0x0000FF}",
    "for (let i = 0; i < 1000000; i++) { total += i * 31; }",
    "logger.info('user %s logged in from %s', '[[EMAIL|alice@corp.example.net]]', '[[IP|172.31.5.9]]')",
    "CREATE TABLE orders (id BIGINT, amount NUMERIC(12, 2), created_at TIMESTAMP);",
    "phone_pattern = r'^1[3-9]\\d{9}$'  # mainland mobile, 11 digits",
    "TEST_CARD = '[[+CARD|424242424242424?]]'",
    "kubectl get pods -n prod --field-selector spec.nodeName=ip-10-0-1-23",
    "docker run -p 8080:80 -e TZ=Asia/Shanghai nginx:1.25.3",
    "ERROR 2024-03-02 08:15:33,120 worker-7 job=4419023 failed after 3 retries",
    "gpg --recv-keys 4AEE18F83AFDEB23",
    "https://example.com/search?q=python&page=2&ts=1705305600",
    'resp = requests.post(url, json={"phone": "[[PHONE|+65 9876 5432]]", "otp": "482913"})',
    "Version: 1.2.3.4-beta (build 20240115.1)",
    # ---- more varied positives -----------------------------------------------------------------
    "emails: [[EMAIL|a.b@c.io]], [[EMAIL|first.last+tag@sub.domain.example]]",
    "Numbers: [[PHONE|13800138000]],[[PHONE|13900139000]]",
    "身份证号码[[+CN_ID|11010119900307651?]]",
    "Kunden-Hotline: [[PHONE|+49 89 1234 5678]] (Mo-Fr 8-18 Uhr)",
    "Позвоните мне: [[PHONE|+7 495 123-45-67]], спасибо.",
    "Mi número es [[PHONE|+34 612 34 56 78]] y mi correo [[EMAIL|lucia.g@correo.es]].",
    "Brazil: [[PHONE|+55 11 91234-5678]]",
    "東京の電話番号は[[PHONE|+81 3-1234-5678]]です。",
    "ID [[+CN_ID|12010419870805304?]] 和手机[[PHONE|15012345678]]都是客户的。",
    "Visa 13-digit legacy [[+CARD|422222222222?]] still in the old DB.",
    "Maestro [[+CARD|6759 6498 2643 845?]] from the UK customer.",
    "Card: [[+CARD|5105105105105100]]",
    "银行卡 [[+CARD|622848004000123456?]] 已绑定。",
    "我的邮箱是[[EMAIL|chen.jing@company.cn]]，电话是[[PHONE|021-6123-4567]]不对，是手机[[PHONE|18800001234]]",
    "IP段 [[IP|10.8.0.1]] 到 [[IP|10.8.0.254]] 都分配给了VPN",
    "请联系：[[PHONE|(+86) 139 1111 2222]]",
    "Singapore hotline [[PHONE|(+65) 6789 0123]]",
    "Zalo: [[PHONE|84912345678]]",
    "Card on file [[+CARD|3714 496353 9843?]] (Amex), billing zip 94103.",
    "The IP [[IP|8.8.8.8]] resolves fine but 8.8.8.256 is invalid.",
    # ---- written after the detectors were tuned on everything above ------------------------------
    "Tel: [[PHONE|+852 9123 4567]] (Hong Kong office), ext. 210",
    "Reach our desk on [[PHONE|+1 415 555 0123]] ext. 42 between 9 and 5.",
    "电话：[[PHONE|010-8888-6666]]，传真：[[PHONE|010-8888-6667]]",
    "Forward it to [[EMAIL|John.Smith@Example.COM]] and [[EMAIL|user123@mail2.server-01.net]].",
    "mailto:[[EMAIL|info@shop.vn]]?subject=Bao%20gia",
    "邮箱：[[EMAIL|abc.def@company.com.cn]]谢谢",
    "卡号[[+CARD|625880137924441?]]还能用吗",
    '{"card_number": "[[CARD|4000-0566-5566-5556]]", "exp": "12/29", "amount": 2599}',
    "身份证[[+CN_ID|44010619851116052?]]（最后一位是小写x也可以吗）",
    "证件号 [[+CN_ID|110105 19491231 002?]] 空格分开写的",
    "Open http://[[IP|192.168.0.1]]/admin and log in with the default password.",
    "Allow [[IP|10.0.0.0]]/16 and [[IP|172.16.0.0]]/12 in the security group.",
    "curl -g 'http://[[[IP|2001:db8::1]]]:8080/health'",
    "The prefix [[IP|2001:db8::]] is reserved for documentation.",
    "Windows 10.0.22631 and Chrome/120.0.6099.109 are on the affected laptops.",
    "Hẹn ngày 15.01.2024 lúc 23:59:59.999, giá 25.000.000 VND.",
    "ISO 8601: 2024-01-15T08:30:00+08:00, offset +08:00.",
    "Singapore is at 1.3521° N, 103.8198° E.",
    "pi ≈ 3.14159265358979 and e ≈ 2.718281828459045",
    "token = 'MTM4MTIzNDU2Nzg5MDEyMzQ1Njc4OQ=='",
    "=SUM(A1:A100) / COUNT(B2:B100)",
    "Timestamp 20240115083000 in the filename, batch 000123.",
    "统一社会信用代码 91310000MA1FL8KQ3X，护照号 E12345678。",
    "Số CCCD 001099012345, cấp ngày 20/05/2021.",
    "订单编号：3456789012345678901，请尽快发货。",
    "订单号：[[~CARD|456789012345678?]]，已付款。",
    "The invoice number is [[~CARD|510000000001234?]] per the ERP export.",
    "Anh gọi [[PHONE|0868 123 456]] hoặc [[PHONE|+84 (0) 868 123 456]] đều được.",
    "Whatsapp [[PHONE|+6591234567]] or [[PHONE|+14155550123]].",
    "客服热线[[PHONE|400-820-8820]]全天服务。",
    "lat/long 31.2304, 121.4737; altitude 4 m.",
    "git checkout 8f14e45fceea167a5a36dedd4bea2543",
    "Build 1.0.0.20240115 failed; rerun with -j8.",
    "My old number [[PHONE|+886 912 345 678]] no longer works.",
    "帮我把这段日志里的IP [[IP|36.110.147.22]] 和 [[IP|2408:8756:c52:1a00::2]] 打码",
    "Price went from 1299000 to 1399000 VND, about 8% up.",
    "He said 'call me maybe' at 8:45pm, not a number.",
    "Please mail the refund cheque; account 12345678 at DBS.",
    "Thẻ tín dụng [[+CARD|3566 0020 2036 050?]] hết hạn 11/26.",
    "ssh -p 2222 deploy@[[IP|203.0.113.7]]",
    "手机号：[[PHONE|１３９ １２３４ ５６７８]]，全角输入的",
    "Call [[PHONE|+1 415 555 0123]] 2 times if nobody answers.",
]


def build() -> list[dict[str, object]]:
    return [render(snippet) for snippet in SNIPPETS]


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    records = build()
    with OUTPUT.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    log.info("wrote %d records to %s", len(records), OUTPUT)


if __name__ == "__main__":
    main()
